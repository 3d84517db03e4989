"""Webhooks end to end: the saga's outcomes POSTed, signed, to real HTTP receivers verified with `standardwebhooks`;
retries on the schedule, 410, a hanging receiver, a secret roll, SSRF refusals, webhook_svc SIGKILLed."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask

from paymesh.ops.launcher import Mesh
from paymesh.order.v1 import order_pb2
from paymesh.webhook.v1 import webhook_pb2
from paymesh.webhook.v1 import webhook_service_pb2 as wpb
from tests.e2e.conftest import launch, shut
from tests.e2e.harness import Clients, eventually, merchant_key, refused, statuses
from tests.webhooks import HANG, Received, Receiver, delete, register

pytestmark = pytest.mark.timeout(120)

CONFIRMED = statuses("CONFIRMED")
CANCELLED = statuses("CANCELLED")
# One mesh for the tests that need the sender's clocks short: retries a second apart (after 1 s then 2 s
# first, which test_retries times), a 2 s request timeout (so a lease lasts 9 s).
FAST = {"PAYMESH_WEBHOOK_RETRY_SCHEDULE": "0,1,2" + ",1" * 40, "PAYMESH_WEBHOOK_TIMEOUT_S": "2"}


@pytest.fixture(scope="module")
def fast_mesh(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    mesh, databases = asyncio.run(launch(backend, tmp_path_factory.mktemp(f"webhooks-{backend}"), **FAST))
    try:
        yield mesh
    finally:
        asyncio.run(shut(mesh, databases))


@pytest.fixture
async def fast(fast_mesh: Mesh) -> Mesh:
    """The module's fast mesh, every service running as it was started (a test may have killed or restarted one)."""
    for child in fast_mesh.dead():
        await fast_mesh.restart(child.service, replica=child.replica)
    return fast_mesh


@contextlib.asynccontextmanager
async def receiving(answer: Callable[[int, Received], int] = lambda n, r: 200) -> AsyncIterator[Receiver]:
    receiver = Receiver(answer=answer)
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


@contextlib.asynccontextmanager
async def own_merchant(mesh: Mesh) -> AsyncIterator[Clients]:
    """Clients of a merchant of the test's own: no other test's orders reach its endpoints."""
    merchant_id, key = await merchant_key(mesh, f"webhooks {uuid.uuid4().hex[:6]}")
    async with Clients(mesh, api_key=key, merchant_id=merchant_id).session() as clients:
        yield clients


async def confirmed_order(clients: Clients) -> order_pb2.Order:
    sku = await clients.put_product(5)
    order = await clients.create_order([(sku, 1, 1250)])
    return await clients.wait_order(order.order_id, CONFIRMED)


async def events_of(clients: Clients, order_id: str) -> list[webhook_pb2.Event]:
    reply = await clients.webhook.ListEvents(wpb.ListEventsRequest(order_id=order_id), timeout=10)
    return list(reply.events)


async def test_a_confirmed_order_is_one_signed_delivery_per_subscribed_endpoint(mesh: Mesh) -> None:
    async with own_merchant(mesh) as clients, receiving() as first, receiving() as second, receiving() as other:
        one = await register(clients.webhook, first, ["order.confirmed"])
        await register(clients.webhook, second, ["*"])
        elsewhere = await register(clients.webhook, other, ["payment.refunded"])
        order = await confirmed_order(clients)

        for receiver in (first, second):
            got = await receiver.wait_for(lambda r: len(r) >= 1, 20, "the order.confirmed delivery")
            [delivery] = got
            assert delivery.verified, delivery.headers
            body = delivery.payload
            assert body["type"] == "order.confirmed"
            assert body["merchant_id"] == clients.merchant_id
            assert body["data"]["object"]["orderId"] == order.order_id
            assert body["data"]["object"]["status"] == "ORDER_STATUS_CONFIRMED"
            assert body["sequence"] == 1
            assert delivery.id == body["id"]
        assert first.received[0].id == second.received[0].id  # one event, two deliveries of it

        [event] = await events_of(clients, order.order_id)
        assert (event.type, event.event_id, event.sequence) == ("order.confirmed", first.received[0].id, 1)

        async def settled() -> webhook_pb2.Event:
            return (await events_of(clients, order.order_id))[0]

        event = await eventually(settled, lambda e: e.succeeded_deliveries == 2, 10, "both deliveries recorded")
        assert (event.pending_deliveries, event.failed_deliveries) == (0, 0)
        deliveries = await clients.webhook.ListDeliveries(
            wpb.ListDeliveriesRequest(endpoint_id=one.endpoint.endpoint_id), timeout=10)
        [d] = deliveries.deliveries
        assert d.status == webhook_pb2.DELIVERY_STATUS_SUCCEEDED
        assert [(a.attempt, a.http_status) for a in d.attempts] == [(1, 200)]
        nothing = await clients.webhook.ListDeliveries(
            wpb.ListDeliveriesRequest(endpoint_id=elsewhere.endpoint.endpoint_id), timeout=10)
        assert list(nothing.deliveries) == [] and other.received == []


async def test_cancel_after_confirm_tells_confirmed_refunded_cancelled_in_sequence(mesh: Mesh) -> None:
    async with own_merchant(mesh) as clients, receiving() as receiver:
        await register(clients.webhook, receiver, ["*"])
        order = await confirmed_order(clients)
        await clients.cancel(order.order_id)
        await clients.wait_order(order.order_id, CANCELLED)
        got = await receiver.wait_for(lambda r: len(r) >= 3, 20, "three deliveries")
        by_sequence = sorted((r.payload["sequence"], r.payload["type"]) for r in got)
        assert [t for _, t in by_sequence][0] == "order.confirmed"
        assert {t for _, t in by_sequence} == {"order.confirmed", "payment.refunded", "order.cancelled"}
        assert [s for s, _ in by_sequence] == [1, 2, 3]
        refunded = next(r.payload for r in got if r.payload["type"] == "payment.refunded")
        assert refunded["data"]["object"]["status"] == "PAYMENT_STATUS_REFUNDED"
        assert all(r.verified for r in got)


async def test_retries_follow_the_schedule_and_410_disables(fast: Mesh) -> None:
    async with own_merchant(fast) as clients:
        flaky_answers = {1: 500, 2: 500}
        async with receiving(lambda n, r: flaky_answers.get(n, 200)) as flaky, \
                receiving(lambda n, r: 410) as gone:
            await register(clients.webhook, flaky, ["order.confirmed"])
            gone_ep = await register(clients.webhook, gone, ["order.confirmed"])
            await confirmed_order(clients)
            got = await flaky.wait_for(lambda r: len(r) >= 3, 30, "the third attempt")
            assert [r.status for r in got] == [500, 500, 200]
            assert len({r.id for r in got}) == 1 and all(r.verified for r in got)
            gaps = [b.at - a.at for a, b in zip(got, got[1:], strict=False)]
            # 1 s then 2 s, each within the ±10 % jitter and the sender's wake-up (a poll of at most 1 s).
            assert 0.85 <= gaps[0] <= 2.2, gaps
            assert 1.75 <= gaps[1] <= 3.3, gaps
            await gone.wait_for(lambda r: len(r) >= 1, 20, "the 410")

            async def endpoint() -> webhook_pb2.Endpoint:
                reply = await clients.webhook.GetEndpoint(
                    wpb.GetEndpointRequest(endpoint_id=gone_ep.endpoint.endpoint_id), timeout=10)
                return reply.endpoint

            disabled = await eventually(endpoint, lambda e: e.disabled, 10, "the endpoint disabled by its 410")
            assert disabled.disabled_reason == "GONE"
            # Disabled: the next order is not sent there.
            await confirmed_order(clients)
            await flaky.wait_for(lambda r: len(r) >= 4, 20, "the second order's delivery")
            assert len(gone.received) == 1


async def test_a_hanging_receiver_delays_no_other_endpoint(fast: Mesh) -> None:
    async with own_merchant(fast) as clients, receiving(lambda n, r: HANG) as stuck, receiving() as fine:
        await register(clients.webhook, stuck, ["order.confirmed"])
        await register(clients.webhook, fine, ["order.confirmed"])
        orders = [await confirmed_order(clients) for _ in range(6)]
        started = time.monotonic()
        got = await fine.wait_for(lambda r: len(r) >= len(orders), 20, "every order at the healthy endpoint")
        assert len({r.payload["data"]["object"]["orderId"] for r in got}) == len(orders)
        # The hanging endpoint holds its own requests, at most its per-endpoint limit at once, not the healthy one's.
        assert time.monotonic() - started < 5
        assert 1 <= stuck.most_in_flight <= 4, stuck.most_in_flight


async def test_a_receiver_down_for_a_hundred_orders_gets_every_event(fast: Mesh) -> None:
    down = True
    async with own_merchant(fast) as clients, receiving(lambda n, r: 503 if down else 200) as receiver:
        await register(clients.webhook, receiver, ["order.confirmed"])
        sku = await clients.put_product(100)
        orders = [await clients.create_order([(sku, 1, 100)]) for _ in range(100)]
        for order in orders:
            await clients.wait_order(order.order_id, CONFIRMED, timeout=60)
        await receiver.wait_for(lambda r: len(r) >= 100, 30, "a failed attempt of each")
        down = False
        await receiver.wait_for(lambda r: len(receiver.delivered()) >= 100, 60, "every event delivered")
        delivered = receiver.delivered()
        assert {r.payload["data"]["object"]["orderId"] for r in delivered.values()} == {o.order_id for o in orders}
        assert all(r.verified for r in receiver.received)


async def test_secret_roll_signs_with_both_during_the_grace_then_the_new_alone(mesh: Mesh) -> None:
    async with own_merchant(mesh) as clients, receiving() as receiver:
        made = await register(clients.webhook, receiver, ["order.confirmed"])
        old = made.secret
        rolled = await clients.webhook.RollEndpointSecret(
            wpb.RollEndpointSecretRequest(request_id=str(uuid.uuid4()), endpoint_id=made.endpoint.endpoint_id,
                                          grace_period=Duration(seconds=3600)), timeout=10)
        new = rolled.secret
        assert new != old and rolled.endpoint.HasField("previous_secret_expire_time")
        await confirmed_order(clients)
        [during] = await receiver.wait_for(lambda r: len(r) >= 1, 20, "a delivery during the grace")
        signatures = during.headers["webhook-signature"].split(" ")
        assert len(signatures) == 2
        for secret in (old, new):
            assert Receiver(secrets=[secret]).verifies(during.headers, during.body)

        await clients.webhook.RollEndpointSecret(
            wpb.RollEndpointSecretRequest(request_id=str(uuid.uuid4()), endpoint_id=made.endpoint.endpoint_id,
                                          grace_period=Duration(seconds=0)), timeout=10)
        latest = await clients.webhook.RollEndpointSecret(
            wpb.RollEndpointSecretRequest(request_id=str(uuid.uuid4()), endpoint_id=made.endpoint.endpoint_id,
                                          grace_period=Duration(seconds=0)), timeout=10)
        await confirmed_order(clients)
        got = await receiver.wait_for(lambda r: len(r) >= 2, 20, "a delivery after the grace")
        after = got[1]
        assert len(after.headers["webhook-signature"].split(" ")) == 1
        assert Receiver(secrets=[latest.secret]).verifies(after.headers, after.body)
        assert not Receiver(secrets=[old, new]).verifies(after.headers, after.body)


PRIVATE_URLS = ["http://127.0.0.1:9/hook", "http://10.0.0.1/hook", "http://169.254.169.254/latest/meta-data",
                "https://localhost:9/hook", "https://127.0.0.1/hook", "https://10.0.0.1/hook",
                "https://169.254.169.254/latest/meta-data", "https://[::1]/hook", "https://[::ffff:127.0.0.1]/hook"]


async def test_private_addresses_are_refused_at_registration_and_at_send_time(fast: Mesh) -> None:
    mesh = fast  # started as `paymesh up` starts it: private addresses allowed, for local receivers
    async with own_merchant(mesh) as clients, receiving() as receiver:
        # Registered while allowed (as DNS may point a name at a public address on the day it is registered)...
        port = receiver.url.split(":")[2].split("/")[0]
        made = await clients.webhook.CreateEndpoint(
            wpb.CreateEndpointRequest(request_id=str(uuid.uuid4()), url=f"http://localhost:{port}/hook",
                                      enabled_events=["*"]), timeout=10)
        # ...and sent once it no longer is: each send resolves and checks again, and never connects.
        await mesh.restart("webhook_svc", {"PAYMESH_WEBHOOK_ALLOW_PRIVATE": "false"})
        try:
            await refused_while_private_is_off(clients, made, port, receiver)
        finally:
            await mesh.restart("webhook_svc")  # as the module's other tests expect it


async def refused_while_private_is_off(clients: Clients, made: wpb.CreateEndpointResponse, port: str,
                                       receiver: Receiver) -> None:
    """With PAYMESH_WEBHOOK_ALLOW_PRIVATE off: every private URL refused at registration, and the endpoint
    registered before refused at send time, its receiver never reached."""
    for url in [*PRIVATE_URLS, f"https://localhost.:{port}/hook"]:
        err = await refused(clients.webhook.CreateEndpoint(
            wpb.CreateEndpointRequest(request_id=str(uuid.uuid4()), url=url, enabled_events=["*"]), timeout=10))
        assert err.code.name == "INVALID_ARGUMENT", (url, err)
        assert "url" in err.fields, (url, err)
    listed = await clients.webhook.ListEndpoints(wpb.ListEndpointsRequest(), timeout=10)
    assert [e.endpoint_id for e in listed.endpoints] == [made.endpoint.endpoint_id]
    await confirmed_order(clients)

    async def attempts() -> list[Any]:
        reply = await clients.webhook.ListDeliveries(
            wpb.ListDeliveriesRequest(endpoint_id=made.endpoint.endpoint_id), timeout=10)
        return [a for d in reply.deliveries for a in d.attempts]

    tried = await eventually(attempts, lambda a: len(a) >= 1, 20, "an attempt")
    assert tried[0].http_status == 0 and "refused address" in tried[0].error, tried[0]
    assert "loopback" in tried[0].error, tried[0]
    assert receiver.received == []


async def test_webhook_svc_killed_with_deliveries_pending_delivers_them_after_restart(fast: Mesh) -> None:
    mesh = fast
    hold = asyncio.Event()

    def answer(n: int, r: Received) -> int:
        if not hold.is_set():
            hold.set()
            return HANG  # the first request is in flight when webhook_svc dies
        return 200

    async with own_merchant(mesh) as clients, receiving(answer) as receiver:
        await register(clients.webhook, receiver, ["order.confirmed"])
        first = await confirmed_order(clients)
        await receiver.wait_for(lambda r: len(r) >= 1, 20, "the first request, held open")
        await mesh.kill("webhook_svc")
        more = [await confirmed_order(clients) for _ in range(5)]  # pending while it is down
        await mesh.restart("webhook_svc")
        await receiver.wait_for(lambda r: len(receiver.delivered()) >= 6, 40, "every event after the restart")
        ids = {r.payload["data"]["object"]["orderId"] for r in receiver.delivered().values()}
        assert ids == {o.order_id for o in [first, *more]}


async def test_endpoint_commands_are_idempotent_and_merchant_scoped(mesh: Mesh) -> None:
    async with own_merchant(mesh) as alice, own_merchant(mesh) as bob, receiving() as receiver:
        request = wpb.CreateEndpointRequest(request_id=str(uuid.uuid4()), url=receiver.url, enabled_events=["*"])
        first = await alice.webhook.CreateEndpoint(request, timeout=10)
        again = await alice.webhook.CreateEndpoint(request, timeout=10)
        assert again == first
        endpoint_id = first.endpoint.endpoint_id
        for call in (
            bob.webhook.GetEndpoint(wpb.GetEndpointRequest(endpoint_id=endpoint_id), timeout=10),
            bob.webhook.DeleteEndpoint(wpb.DeleteEndpointRequest(request_id=str(uuid.uuid4()),
                                                                 endpoint_id=endpoint_id), timeout=10),
            bob.webhook.UpdateEndpoint(wpb.UpdateEndpointRequest(request_id=str(uuid.uuid4()), endpoint_id=endpoint_id,
                                                                 disabled=True), timeout=10),
        ):
            err = await refused(call)
            assert (err.code.name, err.reason) == ("NOT_FOUND", "ENDPOINT_NOT_FOUND")
        assert list((await bob.webhook.ListEndpoints(wpb.ListEndpointsRequest(), timeout=10)).endpoints) == []
        updated = await alice.webhook.UpdateEndpoint(
            wpb.UpdateEndpointRequest(request_id=str(uuid.uuid4()), endpoint_id=endpoint_id, description="renamed",
                                      update_mask=FieldMask(paths=["description"])), timeout=10)
        assert updated.endpoint.description == "renamed" and updated.endpoint.enabled_events == ["*"]
        await delete(alice.webhook, endpoint_id)
        err = await refused(alice.webhook.GetEndpoint(wpb.GetEndpointRequest(endpoint_id=endpoint_id), timeout=10))
        assert err.code.name == "NOT_FOUND"
