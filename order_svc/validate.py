"""What order_svc accepts as input: every violation of a request at once, before anything is written."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from order_svc.domain import Line, Order, OrderStatus, TotalOverflow, total_of
from order_svc.messages import status_from_proto
from order_svc.store import Cursor
from paymesh.chassis import validation
from paymesh.chassis.db import as_utc
from paymesh.chassis.money import INT64_MAX, is_currency
from paymesh.chassis.page_tokens import PageTokens, TokenBinding
from paymesh.chassis.validation import Violations
from paymesh.order.v1 import order_pb2, order_service_pb2

MAX_ITEMS = 100
MAX_CUSTOMER_ID = 64
MAX_TOKEN = 64
MAX_REASON = 200
ORDER_ID = re.compile(r"^ord_[0-9a-f]{32}$")
TOKEN = re.compile(r"^tok_[A-Za-z0-9_]+$")
# A card number is 12 to 19 digits, often grouped by spaces or dashes: never let one in.
PAN_LIKE = re.compile(r"\d(?:[ -]?\d){11,18}")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
LIST_ORDERS = order_service_pb2.DESCRIPTOR.services_by_name["OrderService"].methods_by_name["ListOrders"].full_name


def order_id(v: Violations, value: str, field: str = "order_id") -> None:
    if not value:
        v.add(field, "is required")
    elif not ORDER_ID.match(value):
        v.add(field, f"must be an order id as CreateOrder returns it (ord_ and 32 hex digits), got {value[:80]!r}")


def customer_id(v: Violations, value: str, *, required: bool) -> None:
    if not value:
        if required:
            v.add("customer_id", "is required")
        return
    if len(value) > MAX_CUSTOMER_ID:
        v.add("customer_id", f"must be at most {MAX_CUSTOMER_ID} characters, got {len(value)}")
    elif CONTROL.search(value):
        v.add("customer_id", "must not contain control characters")


def payment_method_token(v: Violations, value: str) -> None:
    field = "payment_method_token"
    if not value:
        v.add(field, "is required: a gateway token such as tok_visa")
    elif PAN_LIKE.search(value):
        # Never echo it: it may be a real card number.
        v.add(field, "looks like a card number; card data must not be sent, only a gateway token (tok_...)")
    elif len(value) > MAX_TOKEN:
        v.add(field, f"must be at most {MAX_TOKEN} characters, got {len(value)}")
    elif not TOKEN.match(value):
        v.add(field, "must be a gateway token: tok_ followed by letters, digits or _ (e.g. tok_visa)")


def create_order(request: order_service_pb2.CreateOrderRequest) -> list[Line]:
    """The request's lines, once every field is valid; InvalidArgument listing every problem otherwise."""
    v = Violations()
    v.request_id("request_id", request.request_id)
    customer_id(v, request.customer_id, required=True)
    lines = _items(v, request.items)
    if not request.currency:
        v.add("currency", "is required: an ISO 4217 code such as USD")
    elif not is_currency(request.currency):
        v.add("currency", f"must be an ISO 4217 currency code such as USD, got {request.currency[:16]!r}")
    payment_method_token(v, request.payment_method_token)
    if lines is not None:
        try:
            total_of(lines)
        except TotalOverflow:
            v.add("items", f"the order total exceeds the largest amount_minor ({INT64_MAX})")
    v.raise_if_any()
    assert lines is not None
    return lines


def _items(v: Violations, items: Sequence[order_pb2.LineItem]) -> list[Line] | None:
    """The lines, or None when any of them is invalid (then the total is not worth computing)."""
    if not items:
        v.add("items", "at least one line item is required")
        return None
    if len(items) > MAX_ITEMS:
        v.add("items", f"at most {MAX_ITEMS} line items, got {len(items)}")
        return None
    before = len(v.items)
    first_line: dict[str, int] = {}
    for i, item in enumerate(items):
        v.identifier(f"items[{i}].sku", item.sku)
        if item.sku in first_line:
            v.add(f"items[{i}].sku", f"{item.sku!r} is already on items[{first_line[item.sku]}]; one line per sku")
        first_line.setdefault(item.sku, i)
        v.check(item.quantity > 0, f"items[{i}].quantity", f"must be greater than 0, got {item.quantity}")
        v.check(
            item.unit_price_minor > 0,
            f"items[{i}].unit_price_minor",
            f"must be greater than 0 (minor units), got {item.unit_price_minor}",
        )
    if len(v.items) > before:
        return None
    return [Line(item.sku, item.quantity, item.unit_price_minor) for item in items]


def cancel_order(request: order_service_pb2.CancelOrderRequest) -> None:
    v = Violations()
    order_id(v, request.order_id)
    v.request_id("request_id", request.request_id)
    if len(request.reason) > MAX_REASON:
        v.add("reason", f"must be at most {MAX_REASON} characters, got {len(request.reason)}")
    v.raise_if_any()


def get_order(request: order_service_pb2.GetOrderRequest) -> str:
    """The order id to read."""
    v = Violations()
    order_id(v, request.order_id)
    v.raise_if_any()
    return request.order_id


def watch_order(request: order_service_pb2.WatchOrderRequest) -> str:
    """The order id to follow."""
    v = Violations()
    order_id(v, request.order_id)
    v.raise_if_any()
    return request.order_id


@dataclass(frozen=True)
class OrderQuery:
    status: OrderStatus | None
    customer_id: str
    page_size: int
    after: Cursor | None
    tokens: TokenBinding = field(compare=False, repr=False)

    def next_token(self, last: Order) -> str:
        """The page token of the page after `last`, under the same filters and merchant."""
        return self.tokens.issue([last.create_time.isoformat(), last.order_id])


def list_orders(request: order_service_pb2.ListOrdersRequest, pages: PageTokens, merchant_id: str) -> OrderQuery:
    v = Violations()
    size = validation.page_size(v, request.page_size)
    status: OrderStatus | None = None
    if request.status not in order_pb2.OrderStatus.values():
        v.add("status", f"is not an OrderStatus: {request.status}")
    else:
        status = status_from_proto(request.status)
    customer_id(v, request.customer_id, required=False)
    tokens = pages.bind(LIST_ORDERS, merchant_id, [str(request.status), request.customer_id])
    cursor = tokens.read(v, request.page_token, 2)
    v.raise_if_any()
    # A verified token holds what next_token wrote: an ISO time and an order id.
    after = None if cursor is None else Cursor(as_utc(datetime.fromisoformat(cursor[0])), cursor[1])
    return OrderQuery(status, request.customer_id, size, after, tokens)
