"""Two merchants on one running mesh: each sees and touches only its own orders, products, payments, webhook
endpoints, events and request ids; the saga and the money add up per merchant."""

from __future__ import annotations

import contextlib
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from paymesh.chassis.auth import ApiKey
from paymesh.client import every
from paymesh.inventory.v1 import inventory_service_pb2
from paymesh.ops.launcher import Mesh
from paymesh.payment.v1 import payment_service_pb2
from paymesh.webhook.v1 import webhook_pb2
from paymesh.webhook.v1 import webhook_service_pb2 as wpb
from tests.e2e.events import Bus
from tests.e2e.harness import CS, OS, Clients, eventually, merchant_key, new_id, refused, statuses
from tests.webhooks import Receiver, register

pytestmark = pytest.mark.timeout(120)


async def other_merchant(mesh: Mesh) -> tuple[str, ApiKey]:
    return await merchant_key(mesh, f"merchant {uuid.uuid4().hex[:6]}")


@pytest.mark.both_backends
async def test_another_merchants_objects_answer_not_found_and_stay_unchanged(mesh: Mesh, bus: Bus) -> None:
    a_id, a_key = await other_merchant(mesh)
    _, b_key = await other_merchant(mesh)
    receiver = Receiver()
    async with (Clients(mesh, api_key=a_key).session() as a, Clients(mesh, api_key=b_key).session() as b,
                contextlib.AsyncExitStack() as stack):
        await receiver.start()
        stack.push_async_callback(receiver.stop)
        endpoint = (await register(a.webhook, receiver, ["*"])).endpoint
        sku = await a.put_product(10)
        order = await a.create_order([(sku, 2, 1250)])
        trail = await bus.follow(order.order_id)
        confirmed = await a.wait_order(order.order_id, statuses("CONFIRMED"))
        payment = await a.payment_of(order.order_id)
        for event in await trail.wait_for("order.placed", "inventory.reserved", "payment.succeeded",
                                          "order.confirmed", "inventory.committed"):
            assert (event.message.merchant_id, event.headers["Paymesh-Merchant"]) == (a_id, a_id), event.subject

        missing, ghost = f"ord_{uuid.uuid4().hex}", f"sku-{uuid.uuid4().hex[:8]}"
        no_payment = f"pay_{uuid.uuid4().hex}"
        no_endpoint, no_event = f"we_{uuid.uuid4().hex}", f"evt_{uuid.uuid4().hex}"

        async def delivered() -> list[webhook_pb2.Delivery]:
            listed = await a.webhook.ListDeliveries(wpb.ListDeliveriesRequest(endpoint_id=endpoint.endpoint_id))
            return list(listed.deliveries)

        succeeded = webhook_pb2.DELIVERY_STATUS_SUCCEEDED
        (sent,) = await eventually(delivered, lambda ds: [d.status for d in ds] == [succeeded], 15,
                                   "order.confirmed delivered to A's endpoint")
        event_id = sent.event_id

        def reservation(order_id: str) -> Any:
            return b.inventory.GetReservation(inventory_service_pb2.GetReservationRequest(order_id=order_id))

        def update_endpoint(endpoint_id: str) -> Any:
            return b.webhook.UpdateEndpoint(wpb.UpdateEndpointRequest(
                request_id=new_id(), endpoint_id=endpoint_id, disabled=True, update_mask=FieldMask(paths=["disabled"])))

        calls: list[tuple[Callable[[str], Awaitable[Any]], str, str]] = [
            (b.client.get_order, order.order_id, missing),
            (lambda o: b.client.cancel_order(o, reason="not mine"), order.order_id, missing),
            (b.client.get_product, sku, ghost),
            (lambda s: b.client.adjust_stock(s, -5), sku, ghost),
            (b.client.get_payment, payment.payment_id, no_payment),
            (b.client.refund_payment, payment.payment_id, no_payment),
            (reservation, order.order_id, missing),
            (lambda e: b.webhook.GetEndpoint(wpb.GetEndpointRequest(endpoint_id=e)), endpoint.endpoint_id, no_endpoint),
            (update_endpoint, endpoint.endpoint_id, no_endpoint),
            (lambda e: b.webhook.RollEndpointSecret(wpb.RollEndpointSecretRequest(request_id=new_id(), endpoint_id=e)),
             endpoint.endpoint_id, no_endpoint),
            (lambda e: b.webhook.DeleteEndpoint(wpb.DeleteEndpointRequest(request_id=new_id(), endpoint_id=e)),
             endpoint.endpoint_id, no_endpoint),
            (lambda e: b.webhook.ResendEvent(wpb.ResendEventRequest(request_id=new_id(), event_id=e)), event_id,
             no_event),
        ]
        for call, theirs, nobodys in calls:
            err, none = await refused(call(theirs)), await refused(call(nobodys))
            assert err.code == none.code == grpc.StatusCode.NOT_FOUND, (err, none)
            # Told apart from a missing one by nothing but the id it names.
            assert err.reason == none.reason and set(err.metadata) == set(none.metadata), (err, none)
        async with b.client.watch_order(order.order_id) as watch:
            with pytest.raises(grpc.aio.AioRpcError) as watched:
                await anext(watch)
        assert watched.value.code() == grpc.StatusCode.NOT_FOUND

        assert (await a.get_order(order.order_id)).status == confirmed.status == OS.ORDER_STATUS_CONFIRMED
        assert await a.stock(sku) == (8, 0, 2)
        after = await a.payment_of(order.order_id)
        assert (after.status, after.refunded_minor) == (payment.status, 0)

        assert order.order_id not in {o.order_id for o in await every(lambda t: b.client.list_orders(page_token=t))}
        assert sku not in {p.sku for p in await every(lambda t: b.client.list_products(page_token=t))}
        listed = await b.payment.ListPayments(payment_service_pb2.ListPaymentsRequest(order_id=order.order_id))
        assert list(listed.payments) == []

        # A's endpoint as it was (enabled, one secret), its one delivery not resent; none of it in B's lists.
        kept = (await a.webhook.GetEndpoint(wpb.GetEndpointRequest(endpoint_id=endpoint.endpoint_id))).endpoint
        assert kept == endpoint and [d.delivery_id for d in await delivered()] == [sent.delivery_id]
        assert list((await b.webhook.ListEndpoints(wpb.ListEndpointsRequest())).endpoints) == []
        assert list((await b.webhook.ListEvents(wpb.ListEventsRequest(order_id=order.order_id))).events) == []
        for request in (wpb.ListDeliveriesRequest(endpoint_id=endpoint.endpoint_id),
                        wpb.ListDeliveriesRequest(event_id=event_id)):
            assert list((await b.webhook.ListDeliveries(request)).deliveries) == []
    # Every call above was logged by each service it reached (refusals too): no line holds a secret.
    logs = "\n".join(path.read_text(errors="replace") for path in mesh.logs.glob("*.log"))
    secrets = [a_key.reveal(), b_key.reveal(), *(k.reveal() for k in (mesh.credentials.platform_key,
                                                                          mesh.credentials.api_key) if k)]
    assert logs and not [s[:12] for s in secrets if s in logs or s[12:] in logs]


async def test_two_merchants_may_sell_one_sku_and_reuse_one_request_id(mesh: Mesh) -> None:
    (_, a_key), (_, b_key) = await other_merchant(mesh), await other_merchant(mesh)
    async with Clients(mesh, api_key=a_key).session() as a, Clients(mesh, api_key=b_key).session() as b:
        sku = f"sku-mug-{uuid.uuid4().hex[:6]}"
        await a.put_product(10, sku=sku)
        await b.put_product(3, sku=sku)
        shared = new_id()
        one = await a.create_order([(sku, 2, 1000)], request_id=shared, customer_id="cus_1")
        two = await b.create_order([(sku, 3, 700)], request_id=shared, customer_id="cus_1")
        assert one.order_id != two.order_id and (one.amount_minor, two.amount_minor) == (2000, 2100)
        replay = await a.create_order([(sku, 2, 1000)], request_id=shared, customer_id="cus_1")
        assert replay.order_id == one.order_id
        await a.wait_order(one.order_id, statuses("CONFIRMED"))
        await b.wait_order(two.order_id, statuses("CONFIRMED"))
        assert await a.stock(sku) == (8, 0, 2)
        assert await b.stock(sku) == (0, 0, 3)
        # B has no stock left; A still has: each merchant's order reserves from its own.
        rejected = await b.create_order([(sku, 1, 700)])
        await b.wait_order(rejected.order_id, statuses("REJECTED"))
        await a.wait_order((await a.create_order([(sku, 1, 1000)])).order_id, statuses("CONFIRMED"))


@pytest.mark.both_backends
async def test_interleaved_merchants_money_adds_up_per_merchant(mesh: Mesh, clients: Clients) -> None:
    """Orders of two merchants at once, some declined: per merchant, charges at the bank (tagged with the
    merchant) equal the confirmed totals, and no charge is another merchant's."""
    merchants = [await other_merchant(mesh) for _ in range(2)]
    sessions = [Clients(mesh, api_key=key) for _, key in merchants]
    try:
        skus = [await s.put_product(50) for s in sessions]
        placed: dict[str, list[str]] = defaultdict(list)
        for i in range(12):
            who = i % 2
            token = "tok_chargeDeclined" if i % 5 == 4 else "tok_visa"
            order = await sessions[who].create_order([(skus[who], 1, 1000 + who * 10)], token=token)
            placed[merchants[who][0]].append(order.order_id)
        confirmed: dict[str, int] = defaultdict(int)
        for (merchant_id, _), session in zip(merchants, sessions, strict=True):
            for order_id in placed[merchant_id]:
                final = await session.wait_order(order_id, statuses("CONFIRMED", "PAYMENT_FAILED"))
                if final.status == OS.ORDER_STATUS_CONFIRMED:
                    confirmed[merchant_id] += final.amount_minor
        for merchant_id, _ in merchants:
            charges = await every(lambda t, m=merchant_id: clients.client.list_charges(merchant_id=m, page_token=t))
            assert {c.merchant_id for c in charges} == {merchant_id}
            assert {c.order_id for c in charges} <= set(placed[merchant_id])
            taken = sum(c.amount_minor for c in charges if c.status == CS.CHARGE_STATUS_SUCCEEDED)
            assert taken == confirmed[merchant_id] > 0, merchant_id
    finally:
        for session in sessions:
            await session.close()
