"""gateway_mock over gRPC, on SQLite and PostgreSQL: test tokens, retries by key, concurrency, reads."""

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

SUCCEEDED, DECLINED = gateway_pb2.CHARGE_STATUS_SUCCEEDED, gateway_pb2.CHARGE_STATUS_DECLINED


def new_key() -> str:
    return f"key-{uuid.uuid4().hex}"


@pytest.mark.parametrize(
    ("token", "status", "decline_code", "last4"),
    [
        ("tok_visa", SUCCEEDED, "", "4242"),
        ("tok_chargeDeclined", DECLINED, "card_declined", "0002"),
        ("tok_chargeDeclinedInsufficientFunds", DECLINED, "insufficient_funds", "9995"),
        ("tok_refundFails", SUCCEEDED, "", "5126"),
    ],
)
async def test_each_token_answers_ok_with_its_outcome(
    gateway: Any, token: str, status: int, decline_code: str, last4: str
) -> None:
    key = new_key()
    request = charge_request(key, token, 2500, currency="EUR", order_id="ord_1", description="two mugs")
    charge = (await gateway.Charge(request)).charge
    assert charge.charge_id.startswith("ch_")
    assert (charge.idempotency_key, charge.amount_minor, charge.refunded_minor, charge.currency) == (
        key, 2500, 0, "EUR",
    )
    assert (charge.status, charge.decline_code, charge.card_last4) == (status, decline_code, last4)
    assert (charge.order_id, charge.description) == ("ord_1", "two mugs")
    assert charge.create_time.seconds > 0 and charge.update_time == charge.create_time
    # A retry answers the same charge; reads agree with it.
    assert (await gateway.Charge(request)).charge == charge
    assert (await gateway.GetCharge(pb.GetChargeRequest(charge_id=charge.charge_id))).charge == charge
    assert (await gateway.GetCharge(pb.GetChargeRequest(idempotency_key=key))).charge == charge
    assert await all_charges(gateway) == [charge]


async def test_lost_response_first_deadline_exceeded_then_the_stored_charge(gateway: Any) -> None:
    key = new_key()
    request = charge_request(key, "tok_lostResponse")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gateway.Charge(request)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    info = error_info(err.value)
    assert (info.reason, info.metadata["idempotency_key"]) == ("GATEWAY_RESPONSE_LOST", key)
    # The charge happened: the caller can learn it by key, and a retry returns it.
    stored = (await gateway.GetCharge(pb.GetChargeRequest(idempotency_key=key))).charge
    assert stored.status == SUCCEEDED and stored.card_last4 == "0259"
    retried = (await gateway.Charge(request)).charge
    assert retried == stored
    assert (await gateway.Charge(request)).charge == stored
    assert [c.charge_id for c in await all_charges(gateway)] == [stored.charge_id]


async def test_flaky_two_unavailable_then_one_charge(gateway: Any) -> None:
    key = new_key()
    request = charge_request(key, "tok_flaky")
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await gateway.Charge(request)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_info(err.value).reason == "GATEWAY_UNAVAILABLE"
        assert await all_charges(gateway) == [], "nothing is stored before an UNAVAILABLE"
    charge = (await gateway.Charge(request)).charge
    assert charge.status == SUCCEEDED
    assert (await gateway.Charge(request)).charge == charge
    assert await all_charges(gateway) == [charge]
    # The attempts are counted per key: another key starts again.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gateway.Charge(charge_request(new_key(), "tok_flaky"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_key_reused_for_another_request_is_refused(gateway: Any) -> None:
    key = new_key()
    original = (await gateway.Charge(charge_request(key, amount=1000, order_id="ord_1"))).charge
    others = [
        charge_request(key, amount=1001, order_id="ord_1"),
        charge_request(key, amount=1000, order_id="ord_1", currency="EUR"),
        charge_request(key, "tok_refundFails", amount=1000, order_id="ord_1"),
        charge_request(key, amount=1000, order_id="ord_2"),
    ]
    for other in others:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await gateway.Charge(other)
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        info = error_info(err.value)
        assert info.reason == "IDEMPOTENCY_KEY_REUSED"
        assert dict(info.metadata) == {"idempotency_key": key, "charge_id": original.charge_id}
    assert await all_charges(gateway) == [original]


@pytest.mark.parametrize("token", ["tok_visa", "tok_lostResponse"])
async def test_twenty_concurrent_charges_with_one_key_make_one_charge(gateway: Any, token: str) -> None:
    key = new_key()
    results = await asyncio.gather(
        *[gateway.Charge(charge_request(key, token)) for _ in range(20)], return_exceptions=True
    )
    answers = [r.charge for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(answers) + len(lost) == 20, [r for r in results if not isinstance(r, grpc.aio.AioRpcError)]
    charges = await all_charges(gateway)
    assert len(charges) == 1
    assert all(answer == charges[0] for answer in answers)
    # Only the attempt that stored a lost-response charge loses its answer.
    assert [e.code() for e in lost] == ([grpc.StatusCode.DEADLINE_EXCEEDED] if token == "tok_lostResponse" else [])


async def test_concurrent_flaky_attempts_count_once_each(gateway: Any) -> None:
    key = new_key()
    results = await asyncio.gather(
        *[gateway.Charge(charge_request(key, "tok_flaky")) for _ in range(20)], return_exceptions=True
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    assert [e.code() for e in failures] == [grpc.StatusCode.UNAVAILABLE] * 2  # type: ignore[attr-defined]
    charges = await all_charges(gateway)
    assert len(charges) == 1
    assert {r.charge.charge_id for r in results if not isinstance(r, BaseException)} == {charges[0].charge_id}


async def test_get_charge_not_found_and_list_pages_and_filters(gateway: Any) -> None:
    for lookup in [pb.GetChargeRequest(charge_id="ch_missing"), pb.GetChargeRequest(idempotency_key="missing")]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await gateway.GetCharge(lookup)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert error_info(err.value).reason == "CHARGE_NOT_FOUND"

    made = []
    for i, token in enumerate(["tok_visa", "tok_chargeDeclined", "tok_visa", "tok_visa", "tok_chargeDeclined"]):
        order_id = "ord_a" if i % 2 == 0 else "ord_b"
        made.append((await gateway.Charge(charge_request(new_key(), token, order_id=order_id))).charge)
    newest_first = list(reversed(made))

    pages, token = [], ""
    while True:
        page = await gateway.ListCharges(pb.ListChargesRequest(page_size=2, page_token=token))
        pages.append([c.charge_id for c in page.charges])
        token = page.next_page_token
        if not token:
            break
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [cid for p in pages for cid in p] == [c.charge_id for c in newest_first]

    assert await all_charges(gateway, order_id="ord_a") == [c for c in newest_first if c.order_id == "ord_a"]
    assert await all_charges(gateway, status=DECLINED) == [c for c in newest_first if c.status == DECLINED]
    assert await all_charges(gateway, order_id="ord_b", status=SUCCEEDED) == [made[3]]
    assert await all_charges(gateway, order_id="ord_none") == []

    first = await gateway.ListCharges(pb.ListChargesRequest(page_size=1, order_id="ord_a"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gateway.ListCharges(pb.ListChargesRequest(page_size=1, page_token=first.next_page_token))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
