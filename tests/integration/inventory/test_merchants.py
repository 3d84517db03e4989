"""inventory_svc serving two merchants: each sees and moves only its own products, reservations and request ids."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from paymesh.chassis.events import MERCHANT
from paymesh.inventory.v1 import inventory_pb2
from paymesh.inventory.v1 import inventory_service_pb2 as pb
from tests.integration.inventory.conftest import Rig
from tests.keys import MERCHANT_A as A
from tests.keys import MERCHANT_B as B

pytestmark = pytest.mark.timeout(30)

RESERVED = inventory_pb2.RESERVATION_STATUS_RESERVED
COMMITTED = inventory_pb2.RESERVATION_STATUS_COMMITTED
RELEASED = inventory_pb2.RESERVATION_STATUS_RELEASED


def rid() -> str:
    return str(uuid.uuid4())


def order_id() -> str:
    return f"ord_{uuid.uuid4().hex}"


async def refusal(call: Any, request: Any) -> tuple[grpc.StatusCode, str, str, dict[str, str]]:
    """Everything a caller learns from a refusal: code, message, and the ErrorInfo's reason and metadata."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(request)
    info = error_details_pb2.ErrorInfo()
    [detail] = [d for d in rpc_status.from_call(err.value).details if d.Is(info.DESCRIPTOR)]
    detail.Unpack(info)
    return err.value.code(), err.value.details(), info.reason, dict(info.metadata)


async def shelf(rig: Rig, sku: str, merchant: str = A) -> tuple[int, int, int]:
    p = await rig.product(sku, merchant=merchant)
    return p.available, p.reserved, p.sold


async def listed(rig: Rig, merchant: str, page_size: int = 500) -> list[inventory_pb2.Product]:
    products, token = [], ""
    while True:
        reply = await rig.stubs[merchant].ListProducts(pb.ListProductsRequest(page_size=page_size, page_token=token))
        products += reply.products
        token = reply.next_page_token
        if not token:
            return products


async def test_another_merchants_rows_answer_exactly_as_missing_ones(rig: Rig) -> None:
    a, b = rig.stubs[A], rig.stubs[B]
    oid = order_id()
    # What A itself is told before the product and the reservation exist: a missing id.
    missing = [
        await refusal(a.GetProduct, pb.GetProductRequest(sku="mug")),
        await refusal(a.AdjustStock, pb.AdjustStockRequest(request_id=rid(), sku="mug", delta=1)),
        await refusal(a.GetReservation, pb.GetReservationRequest(order_id=oid)),
    ]
    assert [m[0] for m in missing] == [grpc.StatusCode.NOT_FOUND] * 3

    await rig.put("mug", 5)
    await rig.placed(oid, ("mug", 2))
    await rig.settle()
    product, reservation = await rig.product("mug"), await rig.reservation(oid)
    assert (product.merchant_id, reservation.merchant_id) == (A, A)

    foreign = [
        await refusal(b.GetProduct, pb.GetProductRequest(sku="mug")),
        await refusal(b.AdjustStock, pb.AdjustStockRequest(request_id=rid(), sku="mug", delta=-5)),
        await refusal(b.GetReservation, pb.GetReservationRequest(order_id=oid)),
    ]
    assert foreign == missing, "another merchant's sku and order read as if they did not exist"
    assert await rig.product("mug") == product, "A's product is untouched"
    assert await rig.reservation(oid) == reservation
    assert await listed(rig, B) == []


async def test_put_product_by_another_merchant_makes_its_own_product(rig: Rig) -> None:
    await rig.put("mug", 5, name="A's mug")
    mine = await rig.put("mug", 1, name="B's mug", merchant=B)
    assert (mine.merchant_id, mine.name, mine.available) == (B, "B's mug", 1)
    a = await rig.product("mug")
    assert (a.merchant_id, a.name, a.available) == (A, "A's mug", 5)
    await rig.stubs[B].AdjustStock(pb.AdjustStockRequest(request_id=rid(), sku="mug", delta=4))
    assert (await shelf(rig, "mug"), await shelf(rig, "mug", B)) == ((5, 0, 0), (5, 0, 0))
    assert await rig.product("mug") == a


async def test_list_products_shows_only_the_callers_own(rig: Rig) -> None:
    for sku in ["c", "a", "b"]:
        await rig.put(sku, 1)
    for sku in ["z", "b"]:
        await rig.put(sku, 2, merchant=B)
    for page_size in (1, 2, 500):
        assert [(p.merchant_id, p.sku) for p in await listed(rig, A, page_size)] == [(A, "a"), (A, "b"), (A, "c")]
        assert [(p.merchant_id, p.sku, p.available) for p in await listed(rig, B, page_size)] == [
            (B, "b", 2), (B, "z", 2)]
    # A page token is its merchant's: the one A was given is refused when B sends it.
    first = await rig.stub.ListProducts(pb.ListProductsRequest(page_size=1))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await rig.stubs[B].ListProducts(pb.ListProductsRequest(page_size=5, page_token=first.next_page_token))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in (refused.value.details() or "")


async def test_one_request_id_used_by_two_merchants_gives_two_independent_results(rig: Rig) -> None:
    a, b = rig.stubs[A], rig.stubs[B]
    shared = rid()
    put_a = pb.PutProductRequest(request_id=shared, sku="mug", name="Mug", available=10)
    put_b = pb.PutProductRequest(request_id=shared, sku="mug", name="Mug", available=3)
    first_a, first_b = await a.PutProduct(put_a), await b.PutProduct(put_b)
    assert (first_a.product.merchant_id, first_a.product.available) == (A, 10)
    assert (first_b.product.merchant_id, first_b.product.available) == (B, 3), "not A's answer replayed"
    assert (await a.PutProduct(put_a), await b.PutProduct(put_b)) == (first_a, first_b), "each replays its own"

    adjusted = rid()
    assert (await a.AdjustStock(pb.AdjustStockRequest(request_id=adjusted, sku="mug", delta=-4))).product.available == 6
    # The same id with another request: for B it is new, not REQUEST_ID_REUSED.
    assert (await b.AdjustStock(pb.AdjustStockRequest(request_id=adjusted, sku="mug", delta=2))).product.available == 5
    assert (await shelf(rig, "mug"), await shelf(rig, "mug", B)) == ((6, 0, 0), (5, 0, 0))
    code, _, reason, _ = await refusal(b.AdjustStock, pb.AdjustStockRequest(request_id=adjusted, sku="mug", delta=1))
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED"), "within B, the id is taken"


async def test_two_merchants_selling_one_sku_reserve_from_their_own_stock(rig: Rig) -> None:
    await rig.put("mug", 10)
    await rig.put("mug", 3, merchant=B)
    await rig.put("tee", 5)  # A's only
    a1, a2, b1, b2, b_tee = (order_id() for _ in range(5))
    await rig.placed(a1, ("mug", 4))
    await rig.placed(b1, ("mug", 2), merchant=B)
    await rig.placed(b2, ("mug", 2), merchant=B)  # B has 1 left; A's 6 are not B's
    await rig.placed(a2, ("mug", 6))
    await rig.placed(b_tee, ("tee", 1), merchant=B)  # a sku only A sells is unknown to B
    await rig.settle()

    assert [o.name for o in await rig.outputs(a1)] == ["reserved"]
    assert [o.name for o in await rig.outputs(a2)] == ["reserved"]
    assert [o.name for o in await rig.outputs(b1)] == ["reserved"]
    [rejected] = await rig.outputs(b2)
    m = rejected.message
    assert (rejected.name, m.reason, m.sku, m.requested, m.available) == ("rejected", "OUT_OF_STOCK", "mug", 2, 1)
    [unknown] = await rig.outputs(b_tee)
    assert (unknown.name, unknown.message.reason, unknown.message.available) == ("rejected", "UNKNOWN_SKU", 0)
    assert (await shelf(rig, "mug"), await shelf(rig, "mug", B)) == ((0, 10, 0), (1, 2, 0))
    assert await shelf(rig, "tee") == (5, 0, 0)

    await rig.paid(a1)
    await rig.declined(a2)
    await rig.paid(b1, merchant=B)
    await rig.settle()
    await rig.cancelled(b1, merchant=B)
    await rig.settle()
    assert (await shelf(rig, "mug"), await shelf(rig, "mug", B)) == ((6, 0, 4), (3, 0, 0))
    for merchant, stocked in ((A, 10), (B, 3)):
        assert sum(await shelf(rig, "mug", merchant)) == stocked, f"stock conserved for {merchant}"


async def test_events_carry_the_orders_merchant_in_payload_and_header(rig: Rig) -> None:
    await rig.put("mug", 5, merchant=B)
    paid, declined, rejected, cancelled = (order_id() for _ in range(4))
    for oid in (paid, declined):
        await rig.placed(oid, ("mug", 1), merchant=B)
    await rig.placed(rejected, ("mug", 50), merchant=B)
    await rig.settle()
    await rig.paid(paid, merchant=B)
    await rig.declined(declined, merchant=B)
    await rig.cancelled(cancelled, merchant=B)
    await rig.settle()

    outputs = await rig.outputs()
    assert sorted(o.name for o in outputs) == ["committed", "rejected", "released", "released", "reserved",
                                               "reserved"]
    for out in outputs:
        assert (out.message.merchant_id, out.headers[MERCHANT]) == (B, B), out
    assert (await rig.reservation(cancelled, merchant=B)).merchant_id == B


async def test_another_merchants_events_naming_an_order_never_touch_it(rig: Rig) -> None:
    await rig.put("mug", 10)
    await rig.put("mug", 10, merchant=B)
    oid = order_id()
    await rig.placed(oid, ("mug", 2))
    await rig.settle()
    reservation = await rig.reservation(oid)

    # B's payment events for A's order find no reservation of B's: ignored, as for an order never seen.
    await rig.paid(oid, merchant=B)
    await rig.declined(oid, merchant=B)
    await rig.settle()
    assert [o.name for o in await rig.outputs(oid)] == ["reserved"]
    # B's cancel gets B's own answer (a tombstone, as for an unseen order); B's late order.placed meets it.
    await rig.cancelled(oid, merchant=B)
    await rig.placed(oid, ("mug", 1), merchant=B)
    await rig.settle()
    assert await rig.reservation(oid) == reservation, "A's reservation is untouched"
    assert (await shelf(rig, "mug"), await shelf(rig, "mug", B)) == ((8, 2, 0), (10, 0, 0))
    answers = [(o.name, o.message.merchant_id) for o in await rig.outputs(oid)]
    assert answers == [("reserved", A), ("released", B)]
    tomb = await rig.reservation(oid, merchant=B)
    assert (tomb.merchant_id, tomb.status, tomb.cancelled, list(tomb.lines)) == (B, RELEASED, True, [])

    # A's own saga goes on as if nothing happened.
    await rig.paid(oid)
    await rig.settle()
    assert (await rig.reservation(oid)).status == COMMITTED
    assert await shelf(rig, "mug") == (8, 0, 2)


async def test_one_batch_of_two_merchants_moves_each_ones_stock(rig: Rig) -> None:
    await rig.put("mug", 2)
    await rig.put("mug", 1, merchant=B)
    a1, a2, b1, b2 = (order_id() for _ in range(4))
    async with rig.stopped():
        # Queued while down, applied as one batch: the shelves are told apart within it.
        await rig.placed(a1, ("mug", 1))
        await rig.placed(b1, ("mug", 1), merchant=B)
        await rig.placed(b2, ("mug", 1), merchant=B)
        await rig.placed(a2, ("mug", 1))
        await rig.cancelled(b1, merchant=B)
        await rig.cancelled(a1, merchant=B)  # B naming A's order: a tombstone of B's
    await rig.settle()
    await rig.paid(a2)  # after: the PAYMENT stream's consumer does not wait for the ORDER stream's
    await rig.settle()
    assert [o.name for o in await rig.outputs(a1)] == ["reserved", "released"]
    assert [o.message.merchant_id for o in await rig.outputs(a1)] == [A, B]
    assert [o.name for o in await rig.outputs(a2)] == ["reserved", "committed"]
    assert [o.name for o in await rig.outputs(b1)] == ["reserved", "released"]
    assert [o.name for o in await rig.outputs(b2)] == ["rejected"]
    assert (await rig.reservation(a1)).status == RESERVED
    assert (await shelf(rig, "mug"), await shelf(rig, "mug", B)) == ((0, 1, 1), (1, 0, 0))
