"""payment_svc calls the gateway with the platform's key: a gateway refusing it (a misconfigured key) is an
operator's error, logged as one; the payment is neither declined nor retried in-process, but waits and is
asked again with backoff, like a gateway that is down, and is charged once the key is fixed."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from payment_svc.domain import GATEWAY_UNAVAILABLE
from payment_svc.service import GATEWAY_API_KEY_ENV
from paymesh.chassis.auth.keys import new_platform_key
from paymesh.ops.natsserver import NatsServer
from paymesh.payment.v1 import payment_service_pb2
from tests.conftest import wait_for
from tests.integration.payment.conftest import PS, Rig, new_order_id, running, settings_for
from tests.integration.payment.scripted_gateway import GatewayServer
from tests.keys import PLATFORM_KEY

pytestmark = pytest.mark.timeout(40)

REFUSALS = [grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED]


@pytest.fixture(params=REFUSALS, ids=[c.name for c in REFUSALS])
async def misconfigured(
    request: pytest.FixtureRequest, nats_server: NatsServer, db_url: str, tmp_path: Path
) -> AsyncIterator[Rig]:
    """A payment_svc presenting PLATFORM_KEY to a gateway that accepts another key, refusing with the code."""
    gateway = GatewayServer(accepted_key=new_platform_key().reveal())
    gateway.servicer.refuse_with = request.param
    await gateway.start()
    try:
        async with running(nats_server, settings_for(nats_server, db_url, tmp_path, gateway.addr), gateway) as rig:
            yield rig
    finally:
        await gateway.stop()


async def trail_details(rig: Rig, payment_id: str) -> list[tuple[str, str]]:
    reply = await rig.payments.ListPaymentEvents(payment_service_pb2.ListPaymentEventsRequest(payment_id=payment_id))
    return [(e.type, e.detail) for e in reply.events]


async def test_a_refused_platform_key_waits_logged_as_an_error_and_charges_once_fixed(
    misconfigured: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig = misconfigured
    assert rig.gateway is not None
    gateway = rig.gateway.servicer
    caplog.set_level(logging.ERROR, logger="payment_svc.gateway_client")
    order_id = new_order_id()
    await rig.place(order_id, deadline_s=30.0)
    await rig.reserve(order_id)

    await wait_for(lambda: gateway.auth_refusals >= 3, message="the charge asked again, call after call")
    payment = await rig.payment_of(order_id)
    assert payment is not None and payment.status == PS.PAYMENT_STATUS_PROCESSING
    assert not payment.charge_outcome_unknown, "a refused key charged nothing"
    assert payment.failure_code == "", "not a decline"
    assert await rig.published(order_id) == []
    assert gateway.charges == {}
    retried = [detail for kind, detail in await trail_details(rig, payment.payment_id) if kind == "charge_retried"]
    assert retried and any("platform key refused" in d for d in retried)
    assert not any("attempt 2" in d or "attempt 3" in d for d in retried), "never retried in-process"

    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "payment_svc.gateway_client"]
    assert errors and GATEWAY_API_KEY_ENV in errors[0].getMessage()
    assert PLATFORM_KEY not in caplog.text and gateway.accepted_key not in caplog.text, "no key in any log line"

    # The operator fixes the key (here on the bank's side): the next redelivery charges, once.
    gateway.accepted_key = PLATFORM_KEY
    payment = await rig.wait_payment(order_id, PS.PAYMENT_STATUS_SUCCEEDED, timeout=15)
    assert gateway.charge_calls[payment.payment_id] == 1 and len(gateway.charges) == 1
    await rig.wait_events(order_id, ["succeeded"])


async def test_past_the_deadline_a_refused_key_gives_up_as_an_unreachable_gateway(misconfigured: Rig) -> None:
    """Nothing was charged, so the saga may end; it ends as for a gateway never reached, not as a decline
    with the gateway's refusal for a card's answer."""
    rig = misconfigured
    order_id = new_order_id()
    await rig.place(order_id, deadline_s=0.5)
    await rig.reserve(order_id)
    payment = await rig.wait_payment(order_id, PS.PAYMENT_STATUS_FAILED, timeout=20)
    assert payment.failure_code == GATEWAY_UNAVAILABLE and not payment.charge_outcome_unknown
    [failed] = await rig.wait_events(order_id, ["failed"])
    assert failed.message.failure_code == GATEWAY_UNAVAILABLE
    assert rig.gateway is not None and rig.gateway.servicer.charges == {}
