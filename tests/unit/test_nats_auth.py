"""The bus's permission table (paymesh.ops.nats_auth), the credentials a service reads, and the durables it declares."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from paymesh.chassis.config import ConfigError, Settings
from paymesh.chassis.nats_creds import NatsCredentials, public_key
from paymesh.chassis.service import Runtime, StartupError, check_consumes
from paymesh.chassis.spec import Durable
from paymesh.ops.dlq import _matches as matches
from paymesh.ops.nats_auth import (
    OPERATOR,
    authorization,
    creds_variable,
    ensure_seeds,
    new_seed,
    operator_permissions,
    permissions_for,
    users,
)
from paymesh.ops.services import SPECS, spec
from tests.keys import AUTH_ENV, PLATFORM_ENV


def may_publish(service: str, subject: str) -> bool:
    return any(matches(p, subject) for p in permissions_for(spec(service))["publish"]["allow"])


def test_inventory_svc_publishes_its_own_events_and_dead_letters_only() -> None:
    assert may_publish("inventory_svc", "inventory.reserved.ord_1")
    assert may_publish("inventory_svc", "dlq.inventory_svc.inventory_svc-order")
    for forged in ("payment.succeeded.ord_1", "order.placed.ord_1", "dlq.payment_svc.payment_svc-order",
                   "dlq.inventory_svc.anything", "$KV.PAYMESH_KEYS.key.key_1", "$KV.PAYMESH_KEYS.merchant.mer_1"):
        assert not may_publish("inventory_svc", forged), forged
    assert may_publish("inventory_svc", "$KV.PAYMESH_KEYS.used.key_1"), "a key's last use is the one write"


def test_inventory_svc_manages_its_own_stream_and_durables_and_reads_the_rest() -> None:
    api = "$JS.API"
    assert may_publish("inventory_svc", f"{api}.STREAM.CREATE.INVENTORY")
    assert may_publish("inventory_svc", f"{api}.CONSUMER.DURABLE.CREATE.ORDER.inventory_svc-order")
    assert may_publish("inventory_svc", f"{api}.CONSUMER.MSG.NEXT.PAYMENT.inventory_svc-payment")
    assert may_publish("inventory_svc", "$JS.ACK.PAYMENT.inventory_svc-payment.1.2.3.4.5")
    assert may_publish("inventory_svc", f"{api}.STREAM.INFO.ORDER"), "it waits for its peers' streams"
    for refused in (f"{api}.STREAM.CREATE.ORDER", f"{api}.STREAM.UPDATE.PAYMENT", f"{api}.STREAM.CREATE.DLQ",
                    f"{api}.STREAM.DELETE.INVENTORY", f"{api}.STREAM.PURGE.INVENTORY", f"{api}.STREAM.CREATE.KV_X",
                    f"{api}.CONSUMER.DURABLE.CREATE.PAYMENT.order_svc-payment", f"{api}.CONSUMER.CREATE.PAYMENT",
                    f"{api}.CONSUMER.DELETE.ORDER.inventory_svc-order", "$JS.ACK.PAYMENT.order_svc-payment.1",
                    f"{api}.STREAM.MSG.DELETE.DLQ", f"{api}.INFO"):
        assert not may_publish("inventory_svc", refused), refused
    assert permissions_for(spec("inventory_svc"))["subscribe"] == {"allow": ["_INBOX.inventory_svc.>"]}


@pytest.mark.parametrize("service", [s.name for s in SPECS])
def test_no_service_may_publish_into_another_services_stream(service: str) -> None:
    for other in (s for s in SPECS if s.stream and s.name != service):
        assert other.stream is not None
        assert not may_publish(service, f"{other.stream.lower()}.succeeded.ord_1"), other.name
        assert not may_publish(service, f"$JS.API.STREAM.CREATE.{other.stream}")


def test_the_gateway_consumes_nothing_and_owns_no_stream() -> None:
    allowed = permissions_for(spec("gateway_mock"))["publish"]["allow"]
    assert all("KV_PAYMESH_KEYS" in p or p.startswith("$KV.PAYMESH_KEYS.used") for p in allowed), allowed


def test_the_operator_administers_and_replays_onto_any_stream() -> None:
    allowed = operator_permissions(SPECS)["publish"]["allow"]
    for subject in ("$JS.API.STREAM.CREATE.DLQ", "$JS.API.STREAM.MSG.DELETE.DLQ", "payment.succeeded.ord_1",
                    "$KV.PAYMESH_KEYS.key.key_1"):
        assert any(matches(p, subject) for p in allowed), subject


def test_the_authorization_names_every_user_by_its_public_key(tmp_path: Path) -> None:
    seeds = ensure_seeds(tmp_path / "creds", users(SPECS))
    assert stat.S_IMODE((tmp_path / "creds").stat().st_mode) == 0o700
    assert {stat.S_IMODE(c.path.stat().st_mode) for c in seeds.values()} == {0o600}
    keys = {user: c.public_key for user, c in seeds.items()}
    block = authorization(keys, SPECS)
    assert [u["nkey"] for u in block["users"]] == [keys[s.name] for s in SPECS] + [keys[OPERATOR]]
    assert all(k.startswith("U") for k in keys.values())
    assert ensure_seeds(tmp_path / "creds", users(SPECS)) == seeds, "kept, not made again"
    with pytest.raises(ValueError, match="no public key for NATS users operator"):
        authorization({s.name: keys[s.name] for s in SPECS}, SPECS)


def settings_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"PAYMESH_DATA_DIR": str(tmp_path), **AUTH_ENV, **PLATFORM_ENV, **extra}


def test_a_service_reads_its_seed_from_its_variable_and_never_shows_it(tmp_path: Path) -> None:
    seed = new_seed()
    path = tmp_path / "inventory_svc.nk"
    path.write_text(seed + "\n")
    settings = Settings.from_env(spec("inventory_svc"), settings_env(tmp_path, INVENTORY_SVC_NATS_CREDS=str(path)))
    assert settings.nats_creds == NatsCredentials("inventory_svc", path, seed)
    assert settings.nats_creds.public_key == public_key(seed)
    assert seed not in repr(settings) and str(path) in repr(settings)
    assert settings.nats_creds.connect_options()["inbox_prefix"] == "_INBOX.inventory_svc"
    assert Settings.from_env(spec("inventory_svc"), settings_env(tmp_path)).nats_creds is None


@pytest.mark.parametrize("content", [None, "", "not a seed", "SAAGNJ"])
def test_a_missing_or_wrong_seed_file_ends_the_start_naming_the_variable(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "creds.nk"
    if content is not None:
        path.write_text(content)
    variable = creds_variable(spec("payment_svc"))
    with pytest.raises(ConfigError, match=f"{variable}={path}") as err:
        Settings.from_env(spec("payment_svc"), settings_env(tmp_path, **{variable: str(path)}))
    assert content is None or not content or content not in str(err.value)


@pytest.mark.parametrize("service", [s.name for s in SPECS])
def test_each_services_wiring_consumes_through_the_durables_its_spec_declares(service: str, tmp_path: Path) -> None:
    """What the NATS users' permissions are written from is what the chassis will bind (else it refuses to start)."""
    the_spec = spec(service)
    env = settings_env(tmp_path)
    runtime = Runtime(the_spec, Settings.from_env(the_spec, env))
    wiring: Any = the_spec.wire(runtime, the_spec.settings(env))
    check_consumes(the_spec, wiring.consumers)
    wrong = type(the_spec)(**{**the_spec.__dict__, "consumes": (Durable("ORDER", f"{service}-other"),)})
    if wiring.consumers:
        with pytest.raises(StartupError, match="ServiceSpec.consumes declares"):
            check_consumes(wrong, wiring.consumers)
