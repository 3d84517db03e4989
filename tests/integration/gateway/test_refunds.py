"""Refunds over gRPC, on SQLite and PostgreSQL: partial and full, idempotent by key, never above the charge."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import pytest

from paymesh.gateway.v1 import gateway_pb2
from paymesh.gateway.v1 import gateway_service_pb2 as pb
from tests.integration.gateway.harness import all_charges, charge_request, error_info

pytestmark = pytest.mark.timeout(30)


def new_key() -> str:
    return f"key-{uuid.uuid4().hex}"


async def charged(stub: Any, token: str = "tok_visa", amount: int = 1000) -> Any:
    return (await stub.Charge(charge_request(new_key(), token, amount))).charge


def refund_request(charge_id: str, amount: int = 0, key: str | None = None, reason: str = "") -> pb.RefundRequest:
    return pb.RefundRequest(idempotency_key=key or new_key(), charge_id=charge_id, amount_minor=amount, reason=reason)


async def refused(call: Any, code: grpc.StatusCode, reason: str) -> dict[str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    info = error_info(err.value)
    assert info.reason == reason
    return dict(info.metadata)


async def test_partial_refunds_then_the_rest(gateway: Any) -> None:
    charge = await charged(gateway, amount=1000)
    key = new_key()
    first = await gateway.Refund(refund_request(charge.charge_id, 300, key, reason="one mug broke"))
    assert first.refund.refund_id.startswith("re_")
    assert (first.refund.amount_minor, first.refund.currency, first.refund.reason) == (300, "USD", "one mug broke")
    assert (first.charge.status, first.charge.refunded_minor) == (gateway_pb2.CHARGE_STATUS_PARTIALLY_REFUNDED, 300)
    assert first.charge.update_time.ToNanoseconds() >= first.charge.create_time.ToNanoseconds()

    # A retry with the same key is the same refund, taken once.
    again = await gateway.Refund(refund_request(charge.charge_id, 300, key, reason="one mug broke"))
    assert again.refund == first.refund and again.charge.refunded_minor == 300
    meta = await refused(gateway.Refund(refund_request(charge.charge_id, 400, key)),
                         grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
    assert meta == {"idempotency_key": key, "refund_id": first.refund.refund_id}

    meta = await refused(gateway.Refund(refund_request(charge.charge_id, 701)),
                         grpc.StatusCode.FAILED_PRECONDITION, "REFUND_EXCEEDS_BALANCE")
    assert (meta["requested_minor"], meta["refundable_minor"]) == ("701", "700")

    rest = await gateway.Refund(refund_request(charge.charge_id, 0))
    assert rest.refund.amount_minor == 700
    assert (rest.charge.status, rest.charge.refunded_minor) == (gateway_pb2.CHARGE_STATUS_REFUNDED, 1000)
    meta = await refused(gateway.Refund(refund_request(charge.charge_id, 0)),
                         grpc.StatusCode.FAILED_PRECONDITION, "CHARGE_NOT_REFUNDABLE")
    assert meta["status"] == "REFUNDED"
    stored = (await gateway.GetCharge(pb.GetChargeRequest(charge_id=charge.charge_id))).charge
    assert stored == rest.charge


async def test_full_refund_at_once(gateway: Any) -> None:
    charge = await charged(gateway, amount=4200)
    full = await gateway.Refund(refund_request(charge.charge_id, 4200))
    assert (full.refund.amount_minor, full.charge.status) == (4200, gateway_pb2.CHARGE_STATUS_REFUNDED)
    await refused(gateway.Refund(refund_request(charge.charge_id, 1)),
                  grpc.StatusCode.FAILED_PRECONDITION, "CHARGE_NOT_REFUNDABLE")


async def test_refunds_refused_for_declined_for_tok_refund_fails_and_for_unknown_charges(gateway: Any) -> None:
    declined = await charged(gateway, "tok_chargeDeclined")
    meta = await refused(gateway.Refund(refund_request(declined.charge_id)),
                         grpc.StatusCode.FAILED_PRECONDITION, "CHARGE_NOT_REFUNDABLE")
    assert meta == {"charge_id": declined.charge_id, "status": "DECLINED"}

    sticky = await charged(gateway, "tok_refundFails")
    for amount in (0, 1, 1000):
        meta = await refused(gateway.Refund(refund_request(sticky.charge_id, amount)),
                             grpc.StatusCode.FAILED_PRECONDITION, "REFUND_DECLINED")
        assert meta == {"charge_id": sticky.charge_id, "decline_code": "refund_declined"}

    await refused(gateway.Refund(refund_request("ch_missing")), grpc.StatusCode.NOT_FOUND, "CHARGE_NOT_FOUND")
    assert {c.charge_id: c.refunded_minor for c in await all_charges(gateway)} == {
        declined.charge_id: 0, sticky.charge_id: 0,
    }


async def test_concurrent_refunds_never_take_more_than_the_charge(gateway: Any) -> None:
    charge = await charged(gateway, amount=1000)
    results = await asyncio.gather(
        *[gateway.Refund(refund_request(charge.charge_id, 300)) for _ in range(10)], return_exceptions=True
    )
    made = [r for r in results if not isinstance(r, BaseException)]
    refusals = [r for r in results if isinstance(r, BaseException)]
    assert len(made) == 3
    assert all(error_info(e).reason == "REFUND_EXCEEDS_BALANCE" for e in refusals)  # type: ignore[arg-type]
    stored = (await gateway.GetCharge(pb.GetChargeRequest(charge_id=charge.charge_id))).charge
    assert stored.refunded_minor == 900


async def test_concurrent_refunds_with_one_key_refund_once(gateway: Any) -> None:
    charge = await charged(gateway, amount=1000)
    key = new_key()
    results = await asyncio.gather(*[gateway.Refund(refund_request(charge.charge_id, 100, key)) for _ in range(10)])
    assert len({r.refund.refund_id for r in results}) == 1
    stored = (await gateway.GetCharge(pb.GetChargeRequest(charge_id=charge.charge_id))).charge
    assert stored.refunded_minor == 100
