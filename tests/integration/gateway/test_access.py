"""Who may call the bank: the platform key charges, an operator key configures, a merchant's key does neither;
no key or a wrong one is unauthenticated; health and reflection stay open; the platform key is a setting."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway_mock.service import PLATFORM_KEY_ENV, SERVICE_NAME, SPEC, GatewaySettings
from paymesh.chassis.auth.keys import new_platform_key, new_secret
from paymesh.chassis.config import ConfigError
from paymesh.gateway.v1 import gateway_pb2
from paymesh.gateway.v1 import gateway_service_pb2 as pb
from tests.integration.gateway.conftest import GatewayRig
from tests.integration.gateway.harness import all_charges, charge_request, error_info
from tests.keys import MERCHANT_A, MERCHANT_B, PLATFORM_KEY

pytestmark = pytest.mark.timeout(30)


def new_key() -> str:
    return f"key-{uuid.uuid4().hex}"


async def refused(call: Any, code: grpc.StatusCode, reason: str) -> tuple[dict[str, str], str]:
    """The refusal's ErrorInfo metadata and message."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    info = error_info(err.value)
    assert info.reason == reason
    return dict(info.metadata), err.value.details() or ""


# --- scopes ---


async def test_a_merchant_key_is_refused_on_every_bank_call(gateway_rig: GatewayRig, gateway: Any) -> None:
    charge = (await gateway.Charge(charge_request(new_key()))).charge
    merchant = gateway_rig.stub(gateway_rig.merchant_key)
    calls = [
        ("Charge", charge_request(new_key()), "platform"),
        ("Refund", pb.RefundRequest(idempotency_key=new_key(), charge_id=charge.charge_id), "platform"),
        ("GetCharge", pb.GetChargeRequest(charge_id=charge.charge_id), "platform"),
        ("ListCharges", pb.ListChargesRequest(merchant_id=MERCHANT_A), "platform"),
        ("Configure", pb.ConfigureRequest(decline_rate=1.0), "operator"),
    ]
    for rpc, request, scope in calls:
        meta, _ = await refused(getattr(merchant, rpc)(request), grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING")
        assert meta["scope"] == scope, rpc
    # Nothing was charged, refunded or configured by the refused calls.
    assert await all_charges(gateway) == [charge]


async def test_the_platform_key_cannot_configure_and_an_operator_key_cannot_charge(gateway: Any,
                                                                                  operator: Any) -> None:
    before = (await operator.Configure(pb.ConfigureRequest())).config
    meta, _ = await refused(gateway.Configure(pb.ConfigureRequest(reset=True, decline_rate=1.0)),
                            grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING")
    # The trusted key is named by its setting, never by any part of the secret.
    assert meta == {"scope": "operator", "key_id": PLATFORM_KEY_ENV}
    assert (await operator.Configure(pb.ConfigureRequest())).config == before

    meta, _ = await refused(operator.Charge(charge_request(new_key())), grpc.StatusCode.PERMISSION_DENIED,
                            "SCOPE_MISSING")
    assert meta["scope"] == "platform"
    assert await all_charges(gateway) == []


# --- authentication ---


async def test_no_key_is_unauthenticated(gateway_rig: GatewayRig, gateway: Any) -> None:
    anonymous = gateway_rig.stub(None)
    for rpc, request in [("Charge", charge_request(new_key())), ("ListCharges", pb.ListChargesRequest()),
                         ("Configure", pb.ConfigureRequest())]:
        await refused(getattr(anonymous, rpc)(request), grpc.StatusCode.UNAUTHENTICATED, "API_KEY_MISSING")
    assert await all_charges(gateway) == []


async def test_a_wrong_key_is_invalid_and_never_repeated(gateway_rig: GatewayRig, gateway: Any) -> None:
    wrong = [
        new_platform_key().reveal(),  # looks like a platform key: not the one the gateway was given
        new_secret(operator=True).reveal(),  # an operator key the bucket never heard of
        PLATFORM_KEY[:-1],  # a truncated copy of the right one
        "not-a-key",
    ]
    for secret in wrong:
        _, message = await refused(gateway_rig.stub(secret).Charge(charge_request(new_key())),
                                   grpc.StatusCode.UNAUTHENTICATED, "API_KEY_INVALID")
        assert secret not in message
    assert await all_charges(gateway) == []


async def test_health_and_reflection_answer_without_a_key(gateway_rig: GatewayRig) -> None:
    async with grpc.aio.insecure_channel(gateway_rig.addr) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ["", SERVICE_NAME]:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name async for r in responses for s in r.list_services_response.service}
        assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names


# --- the platform key as a setting ---


def test_settings_read_the_platform_key_and_hide_it() -> None:
    key = new_platform_key().reveal()
    settings = GatewaySettings.from_env({PLATFORM_KEY_ENV: key})
    assert settings.platform_key.reveal() == key
    assert key not in repr(settings) and key not in str(settings)


@pytest.mark.parametrize(
    "value",
    ["", None, "   ", "pl_mesh_short", new_secret().reveal(), new_secret(operator=True).reveal(),
     "x" + new_platform_key().reveal()[1:]],
    ids=["empty", "unset", "blank", "short", "merchant-key", "operator-key", "other-prefix"],
)
def test_a_missing_or_malformed_platform_key_is_a_config_error(value: str | None) -> None:
    env = {} if value is None else {PLATFORM_KEY_ENV: value}
    with pytest.raises(ConfigError) as err:
        SPEC.settings(env)
    message = str(err.value)
    assert PLATFORM_KEY_ENV in message and "paymesh up" in message
    if value and value.strip():
        assert value not in message, "the refusal must not echo what was set"


def test_the_service_refuses_to_start_without_its_platform_key(tmp_path: Path) -> None:
    merchant_key = new_secret().reveal()
    env = {k: v for k, v in os.environ.items() if k != PLATFORM_KEY_ENV}
    env |= {
        PLATFORM_KEY_ENV: merchant_key,  # a merchant's key where the platform's belongs
        "PAYMESH_DATA_DIR": str(tmp_path),
        "GATEWAY_MOCK_DB_URL": f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}",
        "PAYMESH_NATS_URL": "nats://127.0.0.1:1",  # never reached: the settings are read first
    }
    done = subprocess.run([sys.executable, "-m", "gateway_mock"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2, done.stderr
    assert PLATFORM_KEY_ENV in done.stderr and "paymesh up" in done.stderr
    assert merchant_key not in done.stderr + done.stdout


# --- charges tagged per merchant ---


async def test_charges_are_tagged_per_merchant_and_listed_by_merchant(gateway: Any) -> None:
    made = {MERCHANT_A: [], MERCHANT_B: []}  # type: dict[str, list[Any]]
    for merchant in [MERCHANT_A, MERCHANT_B, MERCHANT_A, MERCHANT_A, MERCHANT_B]:
        charge = (await gateway.Charge(charge_request(new_key(), merchant_id=merchant))).charge
        assert charge.merchant_id == merchant
        made[merchant].append(charge)
    for merchant, charges in made.items():
        assert await all_charges(gateway, merchant_id=merchant) == list(reversed(charges))
        assert all(c.status == gateway_pb2.CHARGE_STATUS_SUCCEEDED for c in charges)
    assert await all_charges(gateway, merchant_id="mer_nobody") == []
    assert len(await all_charges(gateway)) == 5  # the platform sees every merchant's
