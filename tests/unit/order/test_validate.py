"""order_svc's input rules: every violation reported at once, card numbers refused, tokens checked."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from order_svc import validate
from order_svc.domain import Line, Order, OrderStatus
from order_svc.store import Cursor
from paymesh.chassis.errors import InvalidArgument
from paymesh.chassis.money import INT64_MAX
from paymesh.chassis.page_tokens import PageTokens
from paymesh.order.v1 import order_pb2
from paymesh.order.v1 import order_service_pb2 as pb


def create(**overrides: object) -> pb.CreateOrderRequest:
    fields: dict[str, object] = {
        "request_id": str(uuid.uuid4()),
        "customer_id": "cus_1",
        "items": [order_pb2.LineItem(sku="sku-1", quantity=2, unit_price_minor=500)],
        "currency": "USD",
        "payment_method_token": "tok_visa",
    }
    fields.update(overrides)
    return pb.CreateOrderRequest(**fields)  # type: ignore[arg-type]


def fields_of(request: pb.CreateOrderRequest) -> list[str]:
    with pytest.raises(InvalidArgument) as err:
        validate.create_order(request)
    return [field for field, _ in err.value.violations]


def item(sku: str = "sku-1", quantity: int = 1, price: int = 100) -> order_pb2.LineItem:
    return order_pb2.LineItem(sku=sku, quantity=quantity, unit_price_minor=price)


def test_a_valid_request_gives_its_lines() -> None:
    assert validate.create_order(create()) == [Line("sku-1", 2, 500)]


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        ({"request_id": ""}, ["request_id"]),
        ({"request_id": "not-a-uuid"}, ["request_id"]),
        ({"customer_id": ""}, ["customer_id"]),
        ({"customer_id": "c" * 65}, ["customer_id"]),
        ({"customer_id": "a\nb"}, ["customer_id"]),
        ({"items": []}, ["items"]),
        ({"items": [item(sku=f"s{i}") for i in range(101)]}, ["items"]),
        ({"items": [item(sku="")]}, ["items[0].sku"]),
        ({"items": [item(sku="s" * 65)]}, ["items[0].sku"]),
        ({"items": [item(sku="bad sku!")]}, ["items[0].sku"]),
        ({"items": [item(sku="a"), item(sku="a")]}, ["items[1].sku"]),
        ({"items": [item(quantity=0)]}, ["items[0].quantity"]),
        ({"items": [item(quantity=-1)]}, ["items[0].quantity"]),
        ({"items": [item(price=0)]}, ["items[0].unit_price_minor"]),
        ({"items": [item(price=-5)]}, ["items[0].unit_price_minor"]),
        ({"items": [item(sku="a", price=INT64_MAX), item(sku="b", price=1)]}, ["items"]),
        ({"items": [item(quantity=2**40, price=2**40)]}, ["items"]),
        ({"currency": ""}, ["currency"]),
        ({"currency": "usd"}, ["currency"]),
        ({"currency": "XYZ"}, ["currency"]),
        ({"payment_method_token": ""}, ["payment_method_token"]),
        ({"payment_method_token": "visa"}, ["payment_method_token"]),
        ({"payment_method_token": "tok_" + "x" * 61}, ["payment_method_token"]),
        ({"payment_method_token": "tok_bad-token"}, ["payment_method_token"]),
    ],
)
def test_each_bad_field_is_named(overrides: dict[str, object], fields: list[str]) -> None:
    assert fields_of(create(**overrides)) == fields


@pytest.mark.parametrize(
    "pan",
    [
        "4242424242424242",
        "4242 4242 4242 4242",
        "4000-0566-5566-5556",
        "378282246310005",
        "tok_4242424242424242",
        "601111111111",
    ],
)
def test_anything_like_a_card_number_is_refused_and_not_echoed(pan: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        validate.create_order(create(payment_method_token=pan))
    assert [f for f, _ in err.value.violations] == ["payment_method_token"]
    assert "card number" in err.value.message
    assert pan not in err.value.message and pan not in str(err.value.violations)


def test_short_digit_runs_in_a_token_are_fine() -> None:
    validate.create_order(create(payment_method_token="tok_visa_4242"))


def test_every_violation_at_once() -> None:
    request = pb.CreateOrderRequest(items=[item(sku="", quantity=0, price=0)], currency="EURO")
    assert fields_of(request) == [
        "request_id",
        "customer_id",
        "items[0].sku",
        "items[0].quantity",
        "items[0].unit_price_minor",
        "currency",
        "payment_method_token",
    ]


# The RPCs that take just an order id, each as the api calls its validator.
BY_ORDER_ID: dict[str, Callable[[str], str]] = {
    "GetOrder": lambda order_id: validate.get_order(pb.GetOrderRequest(order_id=order_id)),
    "WatchOrder": lambda order_id: validate.watch_order(pb.WatchOrderRequest(order_id=order_id)),
}


@pytest.mark.parametrize("rpc", BY_ORDER_ID)
@pytest.mark.parametrize("value", ["", "123", "ord_123", "ord_" + "G" * 32, "ORD_" + "a" * 32, "ord_" + "a" * 33])
def test_order_ids_must_look_like_ours(rpc: str, value: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        BY_ORDER_ID[rpc](value)
    assert [f for f, _ in err.value.violations] == ["order_id"]
    ours = "ord_" + uuid.uuid4().hex
    assert BY_ORDER_ID[rpc](ours) == ours


def test_cancel_checks_id_request_id_and_reason() -> None:
    with pytest.raises(InvalidArgument) as err:
        validate.cancel_order(pb.CancelOrderRequest(order_id="x", request_id="y", reason="r" * 201))
    assert [f for f, _ in err.value.violations] == ["order_id", "request_id", "reason"]


PAGES = PageTokens(b"k" * 32)
MERCHANT = "mer_a"


def list_orders(**fields: object) -> validate.OrderQuery:
    return validate.list_orders(pb.ListOrdersRequest(**fields), PAGES, MERCHANT)  # type: ignore[arg-type]


def _last() -> Order:
    """An order a page could end with."""
    return Order.place(merchant_id=MERCHANT, customer_id="c1", lines=[Line("sku-1", 1, 100)], currency="USD",
                       payment_method_token="tok_visa", now=datetime(2026, 1, 1, tzinfo=UTC), timeout=timedelta(1))


def test_list_query_and_its_page_token() -> None:
    query = list_orders(status=order_pb2.ORDER_STATUS_CONFIRMED, customer_id="c1")
    assert (query.status, query.customer_id, query.page_size, query.after) == (OrderStatus.CONFIRMED, "c1", 50, None)
    assert list_orders(page_size=10_000).page_size == 500
    last = _last()
    token = query.next_token(last)
    following = list_orders(status=order_pb2.ORDER_STATUS_CONFIRMED, customer_id="c1", page_token=token)
    assert following.after == Cursor(datetime(2026, 1, 1, tzinfo=UTC), last.order_id)


def _token(**filters: object) -> str:
    """A real token of the first page under `filters`."""
    return list_orders(**filters).next_token(_last())


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"page_size": -1}, "page_size"),
        ({"status": 99}, "status"),
        ({"customer_id": "c" * 65}, "customer_id"),
        ({"page_token": "garbage!"}, "page_token"),
        ({"page_token": "eyJ0IjogMX0="}, "page_token"),  # base64 JSON, the format before signed tokens
        # A token of one filter used with another.
        ({"customer_id": "c2", "page_token": _token(customer_id="c1")}, "page_token"),
        ({"page_token": _token(status=order_pb2.ORDER_STATUS_CONFIRMED)}, "page_token"),
    ],
)
def test_bad_list_requests(request_fields: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        list_orders(**request_fields)
    assert [f for f, _ in err.value.violations] == [field]
