"""Merchants at the bank, on SQLite and PostgreSQL: the platform tags each charge with its merchant, refunds
are the charge's merchant's, ListCharges filters by merchant, and an idempotency key (the platform's, global)
used for another merchant is another request, refused without touching the first merchant's charge.

The gateway publishes no events and keeps no request ids of its own, so there is no event or request-id
isolation to prove here (its callers' tests carry those)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import pytest

from paymesh.gateway.v1 import gateway_pb2
from paymesh.gateway.v1 import gateway_service_pb2 as pb
from tests.integration.gateway.harness import all_charges, charge_request, error_info, violated_fields
from tests.keys import MERCHANT_A, MERCHANT_B

pytestmark = pytest.mark.timeout(30)


def new_key() -> str:
    return f"key-{uuid.uuid4().hex}"


async def get(stub: Any, **lookup: str) -> Any:
    return (await stub.GetCharge(pb.GetChargeRequest(**lookup))).charge


async def test_a_charge_and_its_refunds_carry_the_merchant_everywhere_they_are_answered(gateway: Any) -> None:
    key = new_key()
    charge = (await gateway.Charge(charge_request(key, amount=1000, merchant_id=MERCHANT_B, order_id="ord_1"))).charge
    assert charge.merchant_id == MERCHANT_B
    assert await get(gateway, charge_id=charge.charge_id) == charge
    assert await get(gateway, idempotency_key=key) == charge
    assert (await gateway.Charge(charge_request(key, amount=1000, merchant_id=MERCHANT_B, order_id="ord_1"))
            ).charge == charge

    refund_key = new_key()
    refunded = await gateway.Refund(pb.RefundRequest(idempotency_key=refund_key, charge_id=charge.charge_id,
                                                     amount_minor=300))
    assert (refunded.refund.merchant_id, refunded.charge.merchant_id) == (MERCHANT_B, MERCHANT_B)
    again = await gateway.Refund(pb.RefundRequest(idempotency_key=refund_key, charge_id=charge.charge_id,
                                                  amount_minor=300))
    assert again.refund == refunded.refund
    assert (await get(gateway, charge_id=charge.charge_id)).merchant_id == MERCHANT_B


async def test_the_same_key_for_another_merchant_is_refused_and_leaves_the_first_charge_alone(gateway: Any) -> None:
    key = new_key()
    original = (await gateway.Charge(charge_request(key, amount=1000, order_id="ord_1"))).charge
    assert original.merchant_id == MERCHANT_A
    # Everything else the same: still another request, since the charge would be another merchant's.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gateway.Charge(charge_request(key, amount=1000, order_id="ord_1", merchant_id=MERCHANT_B))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    info = error_info(err.value)
    assert info.reason == "IDEMPOTENCY_KEY_REUSED"
    assert dict(info.metadata) == {"idempotency_key": key, "charge_id": original.charge_id}
    assert await get(gateway, idempotency_key=key) == original
    assert await all_charges(gateway) == [original]
    assert await all_charges(gateway, merchant_id=MERCHANT_B) == []


async def test_racing_one_key_for_two_merchants_makes_one_charge(gateway: Any) -> None:
    key = new_key()
    requests = [charge_request(key, merchant_id=m) for m in [MERCHANT_A, MERCHANT_B] * 10]
    results = await asyncio.gather(*[gateway.Charge(r) for r in requests], return_exceptions=True)
    charges = await all_charges(gateway)
    assert len(charges) == 1
    winner = charges[0]
    for request, result in zip(requests, results, strict=True):
        if request.merchant_id == winner.merchant_id:
            assert not isinstance(result, BaseException) and result.charge == winner
        else:
            assert isinstance(result, grpc.aio.AioRpcError)
            assert error_info(result).reason == "IDEMPOTENCY_KEY_REUSED"


async def test_list_charges_by_merchant_pages_only_that_merchant_s(gateway: Any) -> None:
    made: dict[str, list[Any]] = {MERCHANT_A: [], MERCHANT_B: []}
    plan = [(MERCHANT_A, "tok_visa", "ord_1"), (MERCHANT_B, "tok_visa", "ord_1"), (MERCHANT_A, "tok_chargeDeclined",
            "ord_2"), (MERCHANT_B, "tok_chargeDeclined", "ord_2"), (MERCHANT_A, "tok_visa", "ord_1")]
    for merchant, token, order_id in plan:
        made[merchant].append((await gateway.Charge(charge_request(new_key(), token, merchant_id=merchant,
                                                                   order_id=order_id))).charge)
    newest_a = list(reversed(made[MERCHANT_A]))

    pages, token = [], ""
    while True:
        page = await gateway.ListCharges(pb.ListChargesRequest(page_size=1, merchant_id=MERCHANT_A, page_token=token))
        pages.append(list(page.charges))
        token = page.next_page_token
        if not token:
            break
    assert [c for p in pages for c in p] == newest_a
    assert all(c.merchant_id == MERCHANT_A for p in pages for c in p)

    # With the other filters: a merchant's order, a merchant's declines.
    assert await all_charges(gateway, merchant_id=MERCHANT_B, order_id="ord_2") == [made[MERCHANT_B][1]]
    assert await all_charges(gateway, merchant_id=MERCHANT_A, status=gateway_pb2.CHARGE_STATUS_DECLINED) == [
        made[MERCHANT_A][1]
    ]
    assert await all_charges(gateway, merchant_id=MERCHANT_B, order_id="ord_none") == []

    # A page token is bound to its merchant: one of A's pages cannot be read as B's, or as everyone's.
    first = await gateway.ListCharges(pb.ListChargesRequest(page_size=1, merchant_id=MERCHANT_A))
    for other in [MERCHANT_B, ""]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await gateway.ListCharges(pb.ListChargesRequest(page_size=1, merchant_id=other,
                                                            page_token=first.next_page_token))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(err.value) == ["page_token"]
