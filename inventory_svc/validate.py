"""What inventory_svc accepts as input: every violation of a request at once, before anything is read or written."""

from __future__ import annotations

from dataclasses import dataclass

from inventory_svc.domain import MAX_UNITS
from paymesh.chassis.validation import Violations, decode_page_token, encode_page_token, page_size
from paymesh.inventory.v1 import inventory_service_pb2 as pb

MAX_NAME_LEN = 200


@dataclass(frozen=True)
class ProductUpdate:
    """PutProduct: the sku to create or change, its name and the units that can be reserved."""

    sku: str
    name: str
    available: int


@dataclass(frozen=True)
class StockAdjustment:
    """AdjustStock: units added to (delta > 0) or written off (delta < 0) a sku's available stock."""

    sku: str
    delta: int


@dataclass(frozen=True)
class ProductQuery:
    """ListProducts: a page of `page_size` products by sku, those after `after`."""

    page_size: int
    after: str | None

    @staticmethod
    def next_token(last_sku: str) -> str:
        return encode_page_token({"after": last_sku})


def put_product(request: pb.PutProductRequest) -> ProductUpdate:
    v = Violations()
    v.request_id("request_id", request.request_id)
    v.identifier("sku", request.sku)
    v.check(len(request.name) <= MAX_NAME_LEN, "name", f"must be at most {MAX_NAME_LEN} characters")
    v.check(request.available >= 0, "available", "must not be negative")
    v.check(request.available <= MAX_UNITS, "available", f"must be at most {MAX_UNITS}")
    v.raise_if_any()
    return ProductUpdate(request.sku, request.name, request.available)


def adjust_stock(request: pb.AdjustStockRequest) -> StockAdjustment:
    v = Violations()
    v.request_id("request_id", request.request_id)
    v.identifier("sku", request.sku)
    v.check(request.delta != 0, "delta", "must not be zero: positive adds units, negative removes them")
    v.raise_if_any()
    return StockAdjustment(request.sku, request.delta)


def get_product(request: pb.GetProductRequest) -> str:
    """The sku."""
    v = Violations()
    v.identifier("sku", request.sku)
    v.raise_if_any()
    return request.sku


def list_products(request: pb.ListProductsRequest) -> ProductQuery:
    v = Violations()
    limit = page_size(v, request.page_size)
    cursor = decode_page_token(v, request.page_token)
    after = None
    if cursor is not None:
        after = cursor.get("after")
        v.check(isinstance(after, str), "page_token", "is not a token returned by a previous ListProducts")
    v.raise_if_any()
    return ProductQuery(limit, after)


def get_reservation(request: pb.GetReservationRequest) -> str:
    """The order id."""
    v = Violations()
    v.identifier("order_id", request.order_id)
    v.raise_if_any()
    return request.order_id
