"""API keys, pure: making and hashing them, checking each refusal, the pepper file, the token bucket."""

from __future__ import annotations

import json
import logging
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from order_svc.service import SPEC as ORDER_SPEC
from paymesh.chassis.auth import (
    MERCHANT_SCOPES,
    ApiKeyExpired,
    ApiKeyInvalid,
    ApiKeyMissing,
    ApiKeyRecord,
    ApiKeyRevoked,
    Pepper,
    RateLimited,
    RateLimiter,
    Scope,
    ScopeMissing,
    check,
    load_pepper,
)
from paymesh.chassis.auth.interceptor import bearer_key
from paymesh.chassis.auth.keys import (
    MERCHANT_PREFIX,
    OPERATOR_PREFIX,
    SECRET_LENGTH,
    digest,
    looks_like_key,
    new_key,
    new_secret,
    successor,
)
from paymesh.chassis.auth.scopes import parse_scopes
from paymesh.chassis.config import ConfigError, Settings
from paymesh.chassis.errors import PermissionDenied, Unauthenticated, to_status

pytestmark = pytest.mark.timeout(60)

PEPPER = Pepper(b"p" * 40)
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def a_key(**kwargs: object) -> tuple[ApiKeyRecord, str]:
    record, secret = new_key(PEPPER, "m_acme", frozenset({Scope.ORDERS_READ}), NOW, **kwargs)  # type: ignore[arg-type]
    return record, secret.reveal()


def test_a_secret_has_its_prefix_and_256_random_bits() -> None:
    secrets = {new_secret().reveal() for _ in range(200)}
    assert len(secrets) == 200
    for secret in secrets:
        assert secret.startswith(MERCHANT_PREFIX) and len(secret) == SECRET_LENGTH
        assert secret[len(MERCHANT_PREFIX):].isalnum(), "base62: a double-click selects it whole"
        assert looks_like_key(secret)
    # 43 base62 characters hold 256 bits; every character position takes many values.
    body = [s[len(MERCHANT_PREFIX):] for s in secrets]
    assert len(body[0]) == 43
    assert all(len({b[i] for b in body}) > 30 for i in range(1, 43))
    assert new_secret(operator=True).reveal().startswith(OPERATOR_PREFIX)


def test_the_record_holds_a_keyed_hash_never_the_secret() -> None:
    record, secret = a_key()
    assert record.digest == digest(PEPPER, secret) and len(record.digest) == 64
    assert record.digest != digest(Pepper(b"q" * 40), secret), "another pepper, another hash"
    assert record.display_prefix == secret[:12] and record.key_id.startswith("key_")
    stored = record.to_json()
    assert secret.encode() not in stored
    assert secret[12:].encode() not in stored
    assert ApiKeyRecord.from_json(stored) == record


def test_a_record_from_a_newer_writer_still_reads() -> None:
    record, _ = a_key(expires_in=timedelta(days=30))
    raw = json.loads(record.to_json())
    raw["last_used_at"] = "2026-01-03T00:00:00+00:00"
    raw["scopes"].append("disputes:write")
    assert ApiKeyRecord.from_json(json.dumps(raw).encode()) == record


def test_repr_and_str_hide_the_secret_and_the_pepper(caplog: pytest.LogCaptureFixture) -> None:
    record, secret_obj = new_key(PEPPER, "m_acme", MERCHANT_SCOPES, NOW)
    secret = secret_obj.reveal()
    shown = [repr(secret_obj), str(secret_obj), f"{secret_obj}", repr(record), str((record, secret_obj)),
             repr(PEPPER), str(PEPPER)]
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("created %s %r", secret_obj, (record, secret_obj))
    shown.append(caplog.text)
    for text in shown:
        assert secret not in text and secret[12:] not in text
        assert "pppppppp" not in text and record.digest not in text
    assert record.key_id in repr(record) and "sk_mesh_" in repr(secret_obj)


def test_check_admits_a_valid_key_and_names_its_merchant() -> None:
    record, _ = a_key(expires_in=timedelta(hours=1))
    principal = check(record, NOW)
    assert (principal.merchant_id, principal.key_id, principal.scopes, principal.is_operator) == (
        "m_acme", record.key_id, frozenset({Scope.ORDERS_READ}), False)


@pytest.mark.parametrize(
    ("case", "error", "reason"),
    [
        ("unknown", ApiKeyInvalid, "API_KEY_INVALID"),
        ("expired", ApiKeyExpired, "API_KEY_EXPIRED"),
        ("revoked", ApiKeyRevoked, "API_KEY_REVOKED"),
    ],
)
def test_check_refuses_with_the_reason(case: str, error: type[Exception], reason: str) -> None:
    record, secret = a_key(expires_in=timedelta(hours=1))
    if case == "unknown":
        given: ApiKeyRecord | None = None
        now = NOW
    elif case == "expired":
        given, now = record, NOW + timedelta(hours=1)
    else:
        given, now = record.revoked(NOW + timedelta(minutes=1)), NOW + timedelta(minutes=1)
    with pytest.raises(error) as err:
        check(given, now)
    assert isinstance(err.value, Unauthenticated) and err.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert err.value.reason == reason
    assert secret not in err.value.message and secret[:12] not in err.value.message
    if given is not None:
        assert record.key_id in err.value.message, "a person can tell which key to replace"


def test_missing_key() -> None:
    assert bearer_key([("x-other", "1")]) is None
    err = ApiKeyMissing()
    assert (err.code, err.reason) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_MISSING")
    assert "authorization: Bearer" in err.message


def test_bearer_metadata_is_read_strictly() -> None:
    assert bearer_key([("authorization", "Bearer sk_mesh_x")]) == "sk_mesh_x"
    assert bearer_key([("authorization", "bearer  sk_mesh_x ")]) == "sk_mesh_x"
    for bad in (["Basic abc"], ["sk_mesh_x"], ["Bearer "], ["Bearer a", "Bearer b"]):
        with pytest.raises(ApiKeyInvalid) as err:
            bearer_key([("authorization", v) for v in bad])
        assert "sk_mesh_x" not in err.value.message


def test_a_key_without_the_scope_is_denied_naming_the_scope() -> None:
    record, _ = a_key()
    principal = check(record, NOW)
    principal.require(Scope.ORDERS_READ)
    with pytest.raises(ScopeMissing) as err:
        principal.require(Scope.REFUNDS_WRITE)
    assert isinstance(err.value, PermissionDenied)
    assert err.value.reason == "SCOPE_MISSING" and err.value.metadata["scope"] == "refunds:write"


def test_operator_scope_is_for_operator_keys_only() -> None:
    with pytest.raises(ValueError, match="operator keys only"):
        new_key(PEPPER, "m_acme", frozenset({Scope.OPERATOR}), NOW)
    record, secret = new_key(PEPPER, "platform", frozenset(), NOW, operator=True)
    assert secret.reveal().startswith(OPERATOR_PREFIX) and record.scopes == {Scope.OPERATOR}
    assert check(record, NOW).is_operator
    assert Scope.OPERATOR not in MERCHANT_SCOPES and len(MERCHANT_SCOPES) == 8
    merchant = check(new_key(PEPPER, "m_acme", MERCHANT_SCOPES, NOW)[0], NOW)
    assert not merchant.is_operator
    with pytest.raises(ScopeMissing):
        merchant.require(Scope.OPERATOR)
    with pytest.raises(ValueError, match="unknown scope orders:delete"):
        parse_scopes(["orders:read", "orders:delete"])


def test_a_roll_keeps_the_old_key_for_the_grace_and_the_lifetime_for_the_new() -> None:
    old, _ = a_key(expires_in=timedelta(days=30))
    later = NOW + timedelta(days=1)
    new, new_secret_obj = successor(PEPPER, old, later)
    rolled = old.rolled(new.key_id, later, timedelta(hours=24))
    assert rolled.expires_at == later + timedelta(hours=24) and rolled.replaced_by == new.key_id
    assert (new.merchant_id, new.scopes, new.expires_at) == (old.merchant_id, old.scopes, later + timedelta(days=30))
    assert new.digest == digest(PEPPER, new_secret_obj.reveal()) != old.digest
    # A grace longer than the key's remaining life does not extend it.
    assert old.rolled(new.key_id, later, timedelta(days=90)).expires_at == old.expires_at


def test_pepper_from_the_environment(tmp_path: Path) -> None:
    pepper = load_pepper({"PAYMESH_KEY_PEPPER": "e" * 32}, tmp_path)
    assert pepper.value == b"e" * 32
    assert not (tmp_path / "key_pepper").exists()
    with pytest.raises(ConfigError, match="at least 32") as err:
        load_pepper({"PAYMESH_KEY_PEPPER": "short-secret"}, tmp_path)
    assert "short-secret" not in str(err.value)


def test_pepper_file_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = load_pepper({}, data_dir)
    path = data_dir / "key_pepper"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first.value) >= 32
    assert load_pepper({}, data_dir) == first, "kept: every replica and command hashes the same"
    assert [p.name for p in data_dir.iterdir()] == ["key_pepper"], "no temporary file left"


def test_an_unusable_pepper_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "key_pepper"
    path.write_text("too-short")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="at least 32") as err:
        load_pepper({}, tmp_path)
    assert "too-short" not in str(err.value)
    path.write_text("x" * 64)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_pepper({}, tmp_path)
    path.chmod(0o600)
    path.write_bytes(b"\xff\xfe" * 40)
    with pytest.raises(ConfigError, match="cannot read"):
        load_pepper({}, tmp_path)


def test_the_token_bucket_allows_the_burst_then_the_rate() -> None:
    limiter = RateLimiter(rate_per_s=10, burst=3)
    assert [limiter.allow("m_a", 100.0) for _ in range(3)] == [None, None, None]
    wait = limiter.allow("m_a", 100.0)
    assert wait == pytest.approx(0.1)
    assert limiter.allow("m_b", 100.0) is None, "each merchant has its own bucket"
    assert limiter.allow("m_a", 100.05) == pytest.approx(0.05)
    assert limiter.allow("m_a", 100.1) is None
    assert limiter.allow("m_a", 100.1) is not None
    assert [limiter.allow("m_a", 200.0) for _ in range(4)][-1] is not None, "refills up to the burst only"
    off = RateLimiter(0)
    assert all(off.allow("m_a", 0.0) is None for _ in range(10_000))
    settings = Settings.from_env(ORDER_SPEC, {"PAYMESH_RATE_LIMIT_RPS": "0"})
    assert RateLimiter(settings.rate_limit_rps, settings.rate_limit_burst).enabled is False
    assert Settings.from_env(ORDER_SPEC, {}).rate_limit_rps == 10_000
    with pytest.raises(ConfigError, match="PAYMESH_RATE_LIMIT_RPS"):
        Settings.from_env(ORDER_SPEC, {"PAYMESH_RATE_LIMIT_RPS": "fast"})


def test_rate_limited_status_carries_retry_info() -> None:
    status = to_status(RateLimited("m_acme", 0.25))
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = rpc_status.from_call(_Call(status))  # type: ignore[arg-type]
    assert details is not None
    retry = error_details_pb2.RetryInfo()
    assert details.details[1].Unpack(retry)
    assert retry.retry_delay.ToMilliseconds() == 250


class _Call:
    """What rpc_status.from_call reads of a call, from the status the server would send."""

    def __init__(self, status: grpc.Status) -> None:
        self._status = status

    def code(self) -> grpc.StatusCode:
        return self._status.code

    def details(self) -> str:
        return self._status.details

    def trailing_metadata(self) -> object:
        return self._status.trailing_metadata


def test_a_revocation_counts_at_once_whatever_the_operators_clock() -> None:
    record, _ = a_key()
    ahead = record.revoked(NOW + timedelta(minutes=5))  # the revoking operator's clock runs fast
    with pytest.raises(ApiKeyRevoked):
        check(ahead, NOW)
    assert ahead.revoked(NOW + timedelta(hours=1)) is ahead, "revoking twice keeps the first time"
