"""Our Standard Webhooks signatures, verified by the standardwebhooks package (an implementation not ours)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from webhook_svc import signing

BODY = json.dumps({"id": "evt_1", "type": "order.confirmed", "data": {"object": {"order_id": "ord_1"}}}).encode()


def test_one_secret_verifies_with_the_package() -> None:
    secret = signing.new_secret()
    headers = signing.headers([secret], "evt_1", int(time.time()), BODY)
    assert Webhook(secret).verify(BODY, headers) == json.loads(BODY)
    assert headers["webhook-id"] == "evt_1"
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"].startswith("paymesh-webhooks/")
    assert headers["webhook-signature"].startswith("v1,") and " " not in headers["webhook-signature"]


def test_during_a_roll_each_secret_alone_verifies_the_two_signature_header() -> None:
    old, new = signing.new_secret(), signing.new_secret()
    headers = signing.headers([new, old], "evt_2", int(time.time()), BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify(BODY, headers)


def test_a_tampered_body_or_another_secret_fails() -> None:
    secret = signing.new_secret()
    headers = signing.headers([secret], "evt_3", int(time.time()), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace(b"ord_1", b"ord_2"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, {**headers, "webhook-id": "evt_other"})


def test_sign_matches_the_packages_own_signature() -> None:
    secret, now = signing.new_secret(), int(time.time())
    expected = Webhook(secret).sign("evt_4", datetime.fromtimestamp(now, tz=UTC), BODY.decode())
    assert signing.sign(secret, "evt_4", now, BODY) == expected


def test_new_secrets_are_unique_and_accepted_by_the_package() -> None:
    made = {signing.new_secret() for _ in range(200)}
    assert len(made) == 200
    for secret in list(made)[:5]:
        assert secret.startswith("whsec_") and len(secret) == len("whsec_") + 32
        Webhook(secret)


def test_secret_hint_is_the_prefix_and_four_characters() -> None:
    secret = signing.new_secret()
    assert signing.secret_hint(secret) == secret[:10]
    assert signing.secret_hint(secret).startswith("whsec_") and len(signing.secret_hint(secret)) == 10


def test_a_malformed_secret_is_refused_without_being_repeated() -> None:
    for bad in ("nope_c2VjcmV0c2VjcmV0", "whsec_!!!not-base64!!!", "whsec_"):
        with pytest.raises(signing.InvalidSecret) as refused:
            signing.sign(bad, "evt_5", 1, BODY)
        assert bad not in str(refused.value) and refused.value.__cause__ is None
    with pytest.raises(signing.InvalidSecret):
        signing.signature_header([], "evt_5", 1, BODY)


# verify(): what a receiver runs (`paymesh webhooks listen`, demo and bench receivers).


def package_signed(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Headers the standardwebhooks package signs, as a sender that is not ours would send them."""
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, tz=UTC), body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": signature}


def test_verify_accepts_what_the_package_signs() -> None:
    secret = signing.new_secret()
    signing.verify(secret, package_signed(secret, "evt_6", int(time.time()), BODY), BODY)


def test_verify_accepts_our_headers_in_any_case_and_either_secret_of_a_roll() -> None:
    old, new = signing.new_secret(), signing.new_secret()
    headers = signing.headers([new, old], "evt_7", int(time.time()), BODY)
    for secret in (old, new):
        signing.verify(secret, headers, BODY)
    signing.verify(old, {name.title(): value for name, value in headers.items()}, BODY)
    with pytest.raises(signing.InvalidSignature):
        signing.verify(signing.new_secret(), headers, BODY)


def test_verify_refuses_a_tampered_body_id_timestamp_or_signature() -> None:
    secret, now = signing.new_secret(), int(time.time())
    headers = package_signed(secret, "evt_8", now, BODY)
    tampered = [
        (headers, BODY.replace(b"ord_1", b"ord_2")),
        ({**headers, "webhook-id": "evt_other"}, BODY),
        ({**headers, "webhook-timestamp": str(now - 1)}, BODY),
        ({**headers, "webhook-signature": headers["webhook-signature"][:-4] + "AAA="}, BODY),
        ({**headers, "webhook-signature": "v2," + headers["webhook-signature"].removeprefix("v1,")}, BODY),
        ({**headers, "webhook-signature": "v1,not base64!"}, BODY),
        ({**headers, "webhook-signature": "v1"}, BODY),
    ]
    for bad_headers, body in tampered:
        with pytest.raises(signing.InvalidSignature):
            signing.verify(secret, bad_headers, body)


def test_verify_takes_any_matching_signature_of_several() -> None:
    secret, now = signing.new_secret(), int(time.time())
    good = package_signed(secret, "evt_9", now, BODY)
    other = signing.sign(signing.new_secret(), "evt_9", now, BODY)
    header = f"v1a,c29tZXRoaW5nIGVsc2U= {other} {good['webhook-signature']}"
    signing.verify(secret, {**good, "webhook-signature": header}, BODY)


def test_verify_refuses_a_timestamp_outside_the_tolerance_even_when_signed() -> None:
    secret, now = signing.new_secret(), int(time.time())
    for timestamp in (now - 301, now + 301):
        with pytest.raises(signing.InvalidSignature, match="tolerance"):
            signing.verify(secret, package_signed(secret, "evt_10", timestamp, BODY), BODY)
    signing.verify(secret, package_signed(secret, "evt_10", now - 50, BODY), BODY, tolerance_s=60)
    with pytest.raises(signing.InvalidSignature, match="tolerance"):
        signing.verify(secret, package_signed(secret, "evt_10", now - 70, BODY), BODY, tolerance_s=60)


def test_verify_refuses_missing_or_malformed_headers_without_repeating_secrets() -> None:
    secret, now = signing.new_secret(), int(time.time())
    headers = package_signed(secret, "evt_11", now, BODY)
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        with pytest.raises(signing.InvalidSignature, match=name):
            signing.verify(secret, {k: v for k, v in headers.items() if k != name}, BODY)
    for timestamp in ("soon", "1.5e9", "-5", " 1"):
        with pytest.raises(signing.InvalidSignature, match="webhook-timestamp"):
            signing.verify(secret, {**headers, "webhook-timestamp": timestamp}, BODY)
    with pytest.raises(signing.InvalidSignature) as refused:
        signing.verify(signing.new_secret(), headers, BODY)
    assert secret not in str(refused.value) and headers["webhook-signature"][3:] not in str(refused.value)
    assert isinstance(refused.value, ValueError)
