"""Configure over gRPC: seeded random faults repeat exactly, stored results are never faulted, reset, latency."""

from __future__ import annotations

import time
import uuid
from typing import Any

import grpc
import pytest

from paymesh.gateway.v1 import gateway_pb2
from paymesh.gateway.v1 import gateway_service_pb2 as pb
from tests.integration.gateway.harness import all_charges, charge_request

pytestmark = pytest.mark.timeout(30)

FAULTY = {"decline_rate": 0.25, "transient_error_rate": 0.25, "lost_response_rate": 0.25}


async def outcome(stub: Any, request: Any) -> str:
    """What one call did, as a word: OK statuses by charge status, errors by code."""
    try:
        charge = (await stub.Charge(request)).charge
    except grpc.aio.AioRpcError as err:
        return err.code().name
    return gateway_pb2.ChargeStatus.Name(charge.status)


async def run(stub: Any, prefix: str, n: int = 40) -> list[str]:
    return [await outcome(stub, charge_request(f"{prefix}-{i}")) for i in range(n)]


async def test_the_same_seed_gives_the_same_run(gateway: Any, operator: Any) -> None:
    reply = await operator.Configure(pb.ConfigureRequest(reset=True, seed=2026, **FAULTY))
    assert reply.config == gateway_pb2.FaultConfig(seed=2026, **FAULTY)
    first = await run(gateway, "run1")
    assert {"CHARGE_STATUS_SUCCEEDED", "CHARGE_STATUS_DECLINED", "UNAVAILABLE", "DEADLINE_EXCEEDED"} <= set(first)

    await operator.Configure(pb.ConfigureRequest(reset=True, seed=2026, **FAULTY))
    assert await run(gateway, "run2") == first
    await operator.Configure(pb.ConfigureRequest(seed=7))
    assert await run(gateway, "run3") != first, "another seed, other faults"

    # What was stored is never faulted again: a lost response retried is the stored charge, and the
    # keys that failed UNAVAILABLE stored nothing.
    stored = {c.idempotency_key: c for c in await all_charges(gateway)}
    for i, word in enumerate(first):
        key = f"run1-{i}"
        if word == "UNAVAILABLE":
            assert key not in stored
            continue
        assert key in stored
        retried = (await gateway.Charge(charge_request(key))).charge
        assert retried == stored[key]

    # Scripted tokens are not touched by the random faults.
    await operator.Configure(pb.ConfigureRequest(decline_rate=1.0, transient_error_rate=1.0))
    assert await outcome(gateway, charge_request(f"k-{uuid.uuid4().hex}", "tok_chargeDeclined")) == (
        "CHARGE_STATUS_DECLINED"
    )
    assert await outcome(gateway, charge_request(f"k-{uuid.uuid4().hex}", "tok_refundFails")) == (
        "CHARGE_STATUS_SUCCEEDED"
    )


async def test_unset_fields_keep_their_value_and_reset_restores_the_defaults(gateway: Any, operator: Any) -> None:
    await operator.Configure(pb.ConfigureRequest(decline_rate=0.5, seed=3))
    kept = await operator.Configure(pb.ConfigureRequest(latency_ms=1))
    assert kept.config == gateway_pb2.FaultConfig(latency_ms=1, decline_rate=0.5, seed=3)
    reset = await operator.Configure(pb.ConfigureRequest(reset=True))
    assert reset.config == gateway_pb2.FaultConfig()
    assert await run(gateway, "after-reset", 10) == ["CHARGE_STATUS_SUCCEEDED"] * 10


async def test_latency_delays_each_charge(gateway: Any, operator: Any) -> None:
    await operator.Configure(pb.ConfigureRequest(latency_ms=150))
    start = time.perf_counter()
    await gateway.Charge(charge_request(f"k-{uuid.uuid4().hex}"))
    assert time.perf_counter() - start >= 0.15
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gateway.Charge(charge_request(f"k-{uuid.uuid4().hex}"), timeout=0.05)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
