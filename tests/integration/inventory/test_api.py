"""InventoryService over gRPC: products, stock adjustments with request ids, reservations, and refusals."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from inventory_svc.domain import MAX_UNITS
from paymesh.inventory.v1 import inventory_service_pb2 as pb
from tests.integration.inventory.conftest import Rig

pytestmark = pytest.mark.timeout(30)


def rid() -> str:
    return str(uuid.uuid4())


def details(err: grpc.aio.AioRpcError) -> tuple[error_details_pb2.ErrorInfo, list[str]]:
    """The ErrorInfo of a refusal and the fields its BadRequest names (empty if none)."""
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    fields: list[str] = []
    for detail in rpc_status.from_call(err).details:
        if detail.Unpack(info):
            continue
        if detail.Unpack(bad):
            fields = [v.field for v in bad.field_violations]
    assert info.domain == "paymesh.dev"
    return info, fields


async def refused(call: Any, request: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(request)
    return err.value


async def everything(rig: Rig) -> list[Any]:
    return list((await rig.stub.ListProducts(pb.ListProductsRequest(page_size=500))).products)


async def test_put_product_creates_then_renames_and_sets_available(rig: Rig) -> None:
    created = await rig.put("mug", 5, name="Mug")
    assert (created.sku, created.name, created.available, created.reserved, created.sold) == ("mug", "Mug", 5, 0, 0)
    assert created.create_time == created.update_time

    await rig.placed("ord_1", ("mug", 2))
    await rig.settle()
    updated = await rig.put("mug", 7, name="Big mug")
    # Reserved units stay held; available is what can be reserved from now on.
    assert (updated.name, updated.available, updated.reserved, updated.sold) == ("Big mug", 7, 2, 0)
    assert updated.create_time == created.create_time
    assert updated.update_time.ToDatetime() >= created.update_time.ToDatetime()
    assert await rig.product("mug") == updated

    request = pb.PutProductRequest(request_id=rid(), sku="tee", name="Tee", available=1)
    first = await rig.stub.PutProduct(request)
    assert await rig.stub.PutProduct(request) == first, "a retry answers the first response"


async def test_adjust_stock_replays_and_refuses_a_reused_request_id(rig: Rig) -> None:
    await rig.put("mug", 10)
    request = pb.AdjustStockRequest(request_id=rid(), sku="mug", delta=5)
    first = await rig.stub.AdjustStock(request)
    assert first.product.available == 15

    assert await rig.stub.AdjustStock(request) == first
    assert (await rig.product("mug")).available == 15, "a replay does not act twice"
    await rig.stub.AdjustStock(pb.AdjustStockRequest(request_id=rid(), sku="mug", delta=-3))
    assert await rig.stub.AdjustStock(request) == first, "the first answer, even after later changes"
    assert (await rig.product("mug")).available == 12

    err = await refused(rig.stub.AdjustStock, pb.AdjustStockRequest(request_id=request.request_id, sku="mug", delta=6))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    info, _ = details(err)
    assert (info.reason, info.metadata["request_id"]) == ("REQUEST_ID_REUSED", request.request_id)
    assert (await rig.product("mug")).available == 12


async def test_adjust_stock_refuses_going_below_zero_and_unknown_skus(rig: Rig) -> None:
    await rig.put("mug", 4)
    await rig.placed("ord_1", ("mug", 3))
    await rig.settle()
    request = pb.AdjustStockRequest(request_id=rid(), sku="mug", delta=-2)
    err = await refused(rig.stub.AdjustStock, request)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    info, _ = details(err)
    assert info.reason == "INSUFFICIENT_STOCK"
    assert dict(info.metadata) == {"sku": "mug", "available": "1", "requested": "2"}
    p = await rig.product("mug")
    assert (p.available, p.reserved) == (1, 3), "reserved units cannot be written off"
    # A refusal is not remembered: once the stock is there, the same request goes through.
    await rig.stub.AdjustStock(pb.AdjustStockRequest(request_id=rid(), sku="mug", delta=1))
    assert (await rig.stub.AdjustStock(request)).product.available == 0

    err = await refused(rig.stub.AdjustStock, pb.AdjustStockRequest(request_id=rid(), sku="ghost", delta=1))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    info, _ = details(err)
    assert (info.reason, dict(info.metadata)) == ("PRODUCT_NOT_FOUND", {"sku": "ghost"})

    err = await refused(rig.stub.AdjustStock, pb.AdjustStockRequest(request_id=rid(), sku="mug", delta=MAX_UNITS))
    assert (err.code(), details(err)[0].reason) == (grpc.StatusCode.FAILED_PRECONDITION, "STOCK_LIMIT_EXCEEDED")


async def test_get_and_list_products_and_reservations(rig: Rig) -> None:
    for sku in ["e", "a", "c", "b", "d"]:
        await rig.put(sku, 1)
    pages, token = [], ""
    while True:
        reply = await rig.stub.ListProducts(pb.ListProductsRequest(page_size=2, page_token=token))
        pages.append([p.sku for p in reply.products])
        token = reply.next_page_token
        if not token:
            break
    assert pages == [["a", "b"], ["c", "d"], ["e"]]
    assert [p.sku for p in await everything(rig)] == ["a", "b", "c", "d", "e"]

    for call, request, reason in [
        (rig.stub.GetProduct, pb.GetProductRequest(sku="zzz"), "PRODUCT_NOT_FOUND"),
        (rig.stub.GetReservation, pb.GetReservationRequest(order_id="ord_none"), "RESERVATION_NOT_FOUND"),
    ]:
        err = await refused(call, request)
        assert (err.code(), details(err)[0].reason) == (grpc.StatusCode.NOT_FOUND, reason)


def _token(cursor: bytes) -> str:
    return base64.urlsafe_b64encode(cursor).decode()


BAD_INPUT = [
    ("PutProduct", pb.PutProductRequest(), ["request_id", "sku"]),
    (
        "PutProduct",
        pb.PutProductRequest(request_id="not-a-uuid", sku="bad sku!", name="n" * 201, available=-1),
        ["request_id", "sku", "name", "available"],
    ),
    ("PutProduct", pb.PutProductRequest(request_id=rid(), sku="s" * 65, available=1), ["sku"]),
    ("PutProduct", pb.PutProductRequest(request_id=rid(), sku="mug", available=MAX_UNITS + 1), ["available"]),
    ("AdjustStock", pb.AdjustStockRequest(), ["request_id", "sku", "delta"]),
    ("AdjustStock", pb.AdjustStockRequest(request_id=rid(), sku="mug", delta=0), ["delta"]),
    ("AdjustStock", pb.AdjustStockRequest(request_id="123", sku="-mug", delta=1), ["request_id", "sku"]),
    ("GetProduct", pb.GetProductRequest(), ["sku"]),
    ("GetProduct", pb.GetProductRequest(sku="a b"), ["sku"]),
    ("ListProducts", pb.ListProductsRequest(page_size=-1), ["page_size"]),
    ("ListProducts", pb.ListProductsRequest(page_token="not a token"), ["page_token"]),
    ("ListProducts", pb.ListProductsRequest(page_token=_token(b'{"after": "a"}')), ["page_token"]),  # the old format
    ("GetReservation", pb.GetReservationRequest(), ["order_id"]),
    ("GetReservation", pb.GetReservationRequest(order_id="o" * 65), ["order_id"]),
]


async def test_bad_input_is_refused_with_every_violation_and_changes_nothing(rig: Rig) -> None:
    await rig.put("mug", 3, name="Mug")
    before = await everything(rig)
    for method, request, fields in BAD_INPUT:
        err = await refused(getattr(rig.stub, method), request)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, request)
        info, violated = details(err)
        assert info.reason == "INVALID_ARGUMENT"
        assert violated == fields, (method, request)
        assert await everything(rig) == before, f"{method} wrote despite bad input"
    # A refused request_id was not taken: the same id with a valid request goes through.
    for method, request, _ in BAD_INPUT:
        if method == "AdjustStock" and len(request.request_id) == 36:
            fixed = pb.AdjustStockRequest(request_id=request.request_id, sku="mug", delta=1)
            assert (await rig.stub.AdjustStock(fixed)).product.available == 4
