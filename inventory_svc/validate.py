"""What inventory_svc accepts as input: every violation of a request at once, before anything is read or written."""

from __future__ import annotations

from dataclasses import dataclass, field

from inventory_svc.domain import MAX_UNITS
from paymesh.chassis.page_tokens import PageTokens, TokenBinding
from paymesh.chassis.validation import Violations, page_size
from paymesh.inventory.v1 import inventory_service_pb2 as pb

MAX_NAME_LEN = 200
LIST_PRODUCTS = pb.DESCRIPTOR.services_by_name["InventoryService"].methods_by_name["ListProducts"].full_name


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
    tokens: TokenBinding = field(compare=False, repr=False)

    def next_token(self, last_sku: str) -> str:
        return self.tokens.issue([last_sku])


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


def list_products(request: pb.ListProductsRequest, pages: PageTokens, merchant_id: str) -> ProductQuery:
    v = Violations()
    limit = page_size(v, request.page_size)
    tokens = pages.bind(LIST_PRODUCTS, merchant_id)
    cursor = tokens.read(v, request.page_token, 1)
    v.raise_if_any()
    return ProductQuery(limit, None if cursor is None else cursor[0], tokens)


def get_reservation(request: pb.GetReservationRequest) -> str:
    """The order id."""
    v = Violations()
    v.identifier("order_id", request.order_id)
    v.raise_if_any()
    return request.order_id
