"""OrderService over gRPC: request ids (AIP-155), paging (AIP-158), bad input (AIP-193) and WatchOrder."""

from __future__ import annotations

import asyncio
import base64
import uuid
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from order_svc.handlers import SagaAnswers
from order_svc.watch import OrderWatch
from paymesh.chassis.events import InboundEvent
from paymesh.order.v1 import order_pb2
from paymesh.order.v1 import order_service_pb2 as pb
from tests.conftest import wait_for
from tests.integration.order.conftest import Rig, S, create_request, released, reserved, succeeded, voided

pytestmark = pytest.mark.timeout(30)

UNKNOWN_ORDER = "ord_" + "0" * 32


def error_of(err: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, list[str]]:
    """Code, ErrorInfo reason and BadRequest fields of a refusal."""
    status = rpc_status.from_call(err)
    assert status is not None, "a rich status"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.domain == "paymesh.dev"
    fields: list[str] = []
    if len(status.details) > 1:
        bad = error_details_pb2.BadRequest()
        assert status.details[1].Unpack(bad)
        fields = [v.field for v in bad.field_violations]
    return err.code(), info.reason, fields


async def all_orders(rig: Rig, **filters: Any) -> list[order_pb2.Order]:
    """Every page of ListOrders, followed to the end."""
    out: list[order_pb2.Order] = []
    token = ""
    while True:
        page = await rig.orders.ListOrders(pb.ListOrdersRequest(page_token=token, **filters))
        out.extend(page.orders)
        token = page.next_page_token
        if not token:
            return out


async def test_create_order_replay_returns_the_first_answer(rig: Rig) -> None:
    request = create_request()
    first = await rig.orders.CreateOrder(request)
    await rig.answer(reserved(first.order.order_id))
    await rig.wait_status(first.order.order_id, S.ORDER_STATUS_AWAITING_PAYMENT)
    again = await rig.orders.CreateOrder(request)
    assert again == first, "as first answered, PENDING"

    other = pb.CreateOrderRequest()
    other.CopyFrom(request)
    other.customer_id = "someone-else"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rig.orders.CreateOrder(other)
    assert error_of(err.value) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED", [])
    assert [o.order_id for o in await all_orders(rig)] == [first.order.order_id]


async def test_ten_concurrent_duplicates_place_one_order(rig: Rig) -> None:
    request = create_request()
    replies = await asyncio.gather(*(rig.orders.CreateOrder(request) for _ in range(10)), return_exceptions=True)
    answered = [r for r in replies if isinstance(r, pb.CreateOrderResponse)]
    # A duplicate that arrives while the first is still running may be told to retry (ABORTED), never act twice.
    refused = [r for r in replies if not isinstance(r, pb.CreateOrderResponse)]
    assert all(isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.ABORTED for r in refused)
    assert answered and {r.order.order_id for r in answered} == {answered[0].order.order_id}
    [order] = await all_orders(rig)
    assert order.order_id == answered[0].order.order_id
    assert await rig.published_names(order.order_id, 1) == ["placed"]


async def test_cancel_order_replay_returns_the_first_answer(rig: Rig) -> None:
    order = await rig.create()
    request = pb.CancelOrderRequest(order_id=order.order_id, request_id=str(uuid.uuid4()), reason="changed mind")
    first = await rig.orders.CancelOrder(request)
    await rig.answer(voided(order.order_id))
    await rig.answer(released(order.order_id))
    await rig.wait_status(order.order_id, S.ORDER_STATUS_CANCELLED)
    assert await rig.orders.CancelOrder(request) == first, "a retry is answered, not refused as CANCELLED"


async def test_list_orders_newest_first_paged_and_filtered(rig: Rig) -> None:
    mine = [(await rig.create(customer_id="c1")).order_id for _ in range(5)]
    theirs = [(await rig.create(customer_id="c2")).order_id for _ in range(2)]
    await rig.answer(succeeded(mine[1]))
    await rig.wait_status(mine[1], S.ORDER_STATUS_CONFIRMED)

    first = await rig.orders.ListOrders(pb.ListOrdersRequest(page_size=3))
    assert [o.order_id for o in first.orders] == [*reversed(theirs), mine[4]]
    assert first.next_page_token
    everything = await all_orders(rig, page_size=3)
    assert [o.order_id for o in everything] == [*reversed(theirs), *reversed(mine)]

    assert [o.order_id for o in await all_orders(rig, page_size=2, customer_id="c1")] == list(reversed(mine))
    confirmed = await all_orders(rig, status=S.ORDER_STATUS_CONFIRMED)
    assert [(o.order_id, o.status) for o in confirmed] == [(mine[1], S.ORDER_STATUS_CONFIRMED)]
    pending_c2 = await all_orders(rig, status=S.ORDER_STATUS_PENDING, customer_id="c2")
    assert [o.order_id for o in pending_c2] == list(reversed(theirs))
    assert await all_orders(rig, customer_id="nobody") == []

    # A token belongs to its filters.
    token = (await rig.orders.ListOrders(pb.ListOrdersRequest(page_size=1, customer_id="c1"))).next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rig.orders.ListOrders(pb.ListOrdersRequest(page_size=1, customer_id="c2", page_token=token))
    assert error_of(err.value) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", ["page_token"])


def _items(*lines: tuple[str, int, int]) -> list[order_pb2.LineItem]:
    return [order_pb2.LineItem(sku=s, quantity=q, unit_price_minor=p) for s, q, p in lines]


INVALID = grpc.StatusCode.INVALID_ARGUMENT
BAD_INPUT = [
    ("CreateOrder", create_request(request_id="nope"), INVALID, ["request_id"]),
    ("CreateOrder", create_request(customer_id=""), INVALID, ["customer_id"]),
    ("CreateOrder", create_request(customer_id="c" * 65), INVALID, ["customer_id"]),
    ("CreateOrder", create_request(items=[]), INVALID, ["items"]),
    ("CreateOrder", create_request(items=_items(*((f"s{i}", 1, 1) for i in range(101)))), INVALID, ["items"]),
    ("CreateOrder", create_request(items=_items(("", 1, 1))), INVALID, ["items[0].sku"]),
    ("CreateOrder", create_request(items=_items(("a" * 65, 1, 1))), INVALID, ["items[0].sku"]),
    ("CreateOrder", create_request(items=_items(("ok", 1, 1), ("sku 2", 1, 1))), INVALID, ["items[1].sku"]),
    ("CreateOrder", create_request(items=_items(("a", 0, 1))), INVALID, ["items[0].quantity"]),
    ("CreateOrder", create_request(items=_items(("a", 1, 0))), INVALID, ["items[0].unit_price_minor"]),
    ("CreateOrder", create_request(items=_items(("a", 1, -100))), INVALID, ["items[0].unit_price_minor"]),
    ("CreateOrder", create_request(items=_items(("a", 3, 2**62))), INVALID, ["items"]),
    ("CreateOrder", create_request(items=_items(("a", 1, 2**62), ("b", 1, 2**62))), INVALID, ["items"]),
    ("CreateOrder", create_request(currency="XXY"), INVALID, ["currency"]),
    ("CreateOrder", create_request(currency=""), INVALID, ["currency"]),
    ("CreateOrder", create_request(payment_method_token=""), INVALID, ["payment_method_token"]),
    ("CreateOrder", create_request(payment_method_token="4242424242424242"), INVALID, ["payment_method_token"]),
    ("CreateOrder", create_request(payment_method_token="tok_" + "v" * 70), INVALID, ["payment_method_token"]),
    (
        "CreateOrder",
        pb.CreateOrderRequest(),
        INVALID,
        ["request_id", "customer_id", "items", "currency", "payment_method_token"],
    ),
    ("GetOrder", pb.GetOrderRequest(order_id=""), INVALID, ["order_id"]),
    ("GetOrder", pb.GetOrderRequest(order_id="ord_zz"), INVALID, ["order_id"]),
    ("GetOrder", pb.GetOrderRequest(order_id=UNKNOWN_ORDER), grpc.StatusCode.NOT_FOUND, []),
    ("CancelOrder", pb.CancelOrderRequest(order_id=UNKNOWN_ORDER), INVALID, ["request_id"]),
    ("CancelOrder", pb.CancelOrderRequest(order_id="x", request_id=str(uuid.uuid4())), INVALID, ["order_id"]),
    (
        "CancelOrder",
        pb.CancelOrderRequest(order_id=UNKNOWN_ORDER, request_id=str(uuid.uuid4())),
        grpc.StatusCode.NOT_FOUND,
        [],
    ),
    ("ListOrders", pb.ListOrdersRequest(page_token="garbage"), INVALID, ["page_token"]),
    # The format before signed tokens: base64 of a JSON cursor.
    ("ListOrders", pb.ListOrdersRequest(page_token=base64.urlsafe_b64encode(b'{"t": 1}').decode()), INVALID,
     ["page_token"]),
    ("ListOrders", pb.ListOrdersRequest(page_size=-1), INVALID, ["page_size"]),
    ("ListOrders", pb.ListOrdersRequest(status=42), INVALID, ["status"]),
    ("WatchOrder", pb.WatchOrderRequest(order_id="nope"), INVALID, ["order_id"]),
    ("WatchOrder", pb.WatchOrderRequest(order_id=UNKNOWN_ORDER), grpc.StatusCode.NOT_FOUND, []),
]


async def test_bad_input_is_refused_with_every_field_and_writes_nothing(rig: Rig) -> None:
    existing = await rig.create()
    before = await all_orders(rig)
    for method, request, code, fields in BAD_INPUT:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            if method == "WatchOrder":
                async for _ in rig.orders.WatchOrder(request):
                    pass
            else:
                await getattr(rig.orders, method)(request)
        got = error_of(err.value)
        reason = "ORDER_NOT_FOUND" if code == grpc.StatusCode.NOT_FOUND else "INVALID_ARGUMENT"
        assert got == (code, reason, fields), f"{method} {request}"
        assert "4242424242424242" not in (err.value.details() or "")
    assert await all_orders(rig) == before
    assert await rig.published_names(existing.order_id, 1) == ["placed"]


async def test_watch_order_streams_each_status_and_ends(rig: Rig) -> None:
    in_process_only(rig)
    order = await rig.create()
    seen: list[int] = []
    first_seen = asyncio.Event()

    async def watch() -> None:
        async for reply in rig.orders.WatchOrder(pb.WatchOrderRequest(order_id=order.order_id)):
            seen.append(reply.order.status)
            first_seen.set()

    watcher = asyncio.create_task(watch())
    await asyncio.wait_for(first_seen.wait(), 5)
    await rig.answer(reserved(order.order_id))
    await wait_for(lambda: len(seen) == 2, message="AWAITING_PAYMENT streamed")
    await rig.answer(succeeded(order.order_id))
    await asyncio.wait_for(watcher, 5)  # the stream ends by itself at CONFIRMED
    assert seen == [S.ORDER_STATUS_PENDING, S.ORDER_STATUS_AWAITING_PAYMENT, S.ORDER_STATUS_CONFIRMED]


def in_process_only(rig: Rig) -> None:
    """No fallback re-read during the test: every state must come from the commits themselves."""
    rig.api.watch_reread_s = 30


async def read_to_end(stream: Any) -> list[int]:
    statuses = []
    while (reply := await stream.read()) != grpc.aio.EOF:
        statuses.append(reply.order.status)
    return statuses


async def test_watch_order_follows_a_cancel_to_its_end(rig: Rig) -> None:
    in_process_only(rig)
    order = await rig.create()
    stream = rig.orders.WatchOrder(pb.WatchOrderRequest(order_id=order.order_id))
    assert (await stream.read()).order.status == S.ORDER_STATUS_PENDING
    await rig.cancel(order.order_id)
    await rig.answer(voided(order.order_id))
    await rig.answer(released(order.order_id))
    # CANCELLING, again when the first answer is counted, then CANCELLED.
    assert await read_to_end(stream) == [S.ORDER_STATUS_CANCELLING, S.ORDER_STATUS_CANCELLING, S.ORDER_STATUS_CANCELLED]


async def test_watch_order_sees_every_state_of_one_batch(rig: Rig) -> None:
    in_process_only(rig)
    order = await rig.create()
    stream = rig.orders.WatchOrder(pb.WatchOrderRequest(order_id=order.order_id))
    assert (await stream.read()).order.status == S.ORDER_STATUS_PENDING
    events = [reserved(order.order_id), succeeded(order.order_id)]
    batch = [InboundEvent(e.event_id, "", type(e).DESCRIPTOR.full_name, e, None, 1, None) for e in events]
    async with rig.host.runtime.db.unit_of_work() as uow:
        await rig.handler(uow, batch)
        await uow.commit()
    assert await read_to_end(stream) == [S.ORDER_STATUS_AWAITING_PAYMENT, S.ORDER_STATUS_CONFIRMED]


async def test_watch_rereads_for_changes_another_replica_commits(rig: Rig) -> None:
    rig.api.watch_reread_s = 0.1
    order = await rig.create()
    stream = rig.orders.WatchOrder(pb.WatchOrderRequest(order_id=order.order_id))
    assert (await stream.read()).order.status == S.ORDER_STATUS_PENDING
    replica = SagaAnswers(rig.host.runtime, rig.api.orders, OrderWatch())  # commits nobody here hears of
    batch = [
        InboundEvent(e.event_id, "", type(e).DESCRIPTOR.full_name, e, None, 1, None)
        for e in (succeeded(order.order_id),)
    ]
    async with rig.host.runtime.db.unit_of_work() as uow:
        await replica.apply(uow, batch)
        await uow.commit()
    assert await read_to_end(stream) == [S.ORDER_STATUS_CONFIRMED]


async def test_watch_of_a_settled_order_sends_it_once_and_ends(rig: Rig) -> None:
    order = await rig.create()
    await rig.answer(succeeded(order.order_id))
    await rig.wait_status(order.order_id, S.ORDER_STATUS_CONFIRMED)
    replies = [r async for r in rig.orders.WatchOrder(pb.WatchOrderRequest(order_id=order.order_id))]
    assert [r.order.status for r in replies] == [S.ORDER_STATUS_CONFIRMED]


async def test_watch_ends_when_the_client_goes_away(rig: Rig) -> None:
    order = await rig.create()
    stream = rig.orders.WatchOrder(pb.WatchOrderRequest(order_id=order.order_id))
    await stream.read()
    assert rig.watch._followers  # noqa: SLF001 - the server holds the stream open
    stream.cancel()
    await wait_for(lambda: not rig.watch._followers, message="server side of the stream ended")  # noqa: SLF001


async def test_watch_ends_when_the_server_stops(rig: Rig) -> None:
    order = await rig.create()
    stream = rig.orders.WatchOrder(pb.WatchOrderRequest(order_id=order.order_id))
    await stream.read()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await rig.host.stop()
    # The stream ends: cleanly when the handler saw the shutdown first, else cancelled by gRPC.
    try:
        assert await stream.read() is grpc.aio.EOF
    except grpc.aio.AioRpcError as err:
        assert err.code() in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    assert loop.time() - started < 5, "within the shutdown grace period"
    # The cancelled handler unwinds on its own task, just after the stop returns.
    await wait_for(lambda: not rig.watch._followers, timeout=5, message="watch released")  # noqa: SLF001
    assert rig.host.tasks and all(task.done() for task in rig.host.tasks), "the sweeper stopped"
