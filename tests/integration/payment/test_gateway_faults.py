"""The gateway down, unreachable past the deadline, or silent: no blind failure, never two charges."""

from __future__ import annotations

from pathlib import Path

import pybreaker
import pytest

from payment_svc.domain import GATEWAY_UNAVAILABLE
from paymesh.ops.natsserver import NatsServer, free_port
from tests.conftest import wait_for
from tests.integration.payment.conftest import PS, Rig, new_order_id, running, settings_for
from tests.integration.payment.scripted_gateway import GatewayServer

pytestmark = pytest.mark.timeout(30)


def gateway(rig: Rig) -> GatewayServer:
    assert rig.gateway is not None
    return rig.gateway


async def test_gateway_down_opens_the_breaker_and_the_payment_waits_then_charges_once(rig: Rig) -> None:
    await gateway(rig).stop()
    order_id = new_order_id()
    await rig.place(order_id)
    await rig.reserve(order_id)
    breaker = rig.gateway_client.breaker
    await wait_for(lambda: breaker.current_state == pybreaker.STATE_OPEN, message="breaker open")
    payment = await rig.payment_of(order_id)
    assert payment is not None and payment.status == PS.PAYMENT_STATUS_PROCESSING
    assert not payment.charge_outcome_unknown, "connection refused never reached the gateway"
    assert await rig.published(order_id) == []

    await gateway(rig).start()
    payment = await rig.wait_payment(order_id, PS.PAYMENT_STATUS_SUCCEEDED, timeout=15)
    await wait_for(lambda: breaker.current_state == pybreaker.STATE_CLOSED, message="breaker closed again")
    assert gateway(rig).servicer.charge_calls[payment.payment_id] == 1
    assert "charge_retried" in await rig.trail(payment.payment_id)
    await rig.wait_events(order_id, ["succeeded"])


async def test_past_the_deadline_a_never_reached_gateway_fails_the_payment(
    nats_server: NatsServer, db_url: str, tmp_path: Path
) -> None:
    # Nothing listens on this port: every attempt is refused before it reaches a gateway.
    settings = settings_for(nats_server, db_url, tmp_path, f"127.0.0.1:{free_port()}")
    async with running(nats_server, settings, None) as rig:
        order_id = new_order_id()
        await rig.place(order_id, deadline_s=1.0)
        await rig.reserve(order_id)
        payment = await rig.wait_payment(order_id, PS.PAYMENT_STATUS_FAILED, timeout=10)
        assert payment.failure_code == GATEWAY_UNAVAILABLE and not payment.charge_outcome_unknown
        [failed] = await rig.wait_events(order_id, ["failed"])
        assert failed.message.failure_code == GATEWAY_UNAVAILABLE
        trail = await rig.trail(payment.payment_id)
        assert trail[:2] == ["created", "charge_requested"] and trail[-1] == "charge_failed"


async def test_a_charge_that_may_have_happened_is_never_failed_blind(rig: Rig) -> None:
    """Every answer is lost past the deadline: the payment keeps asking with its key until one arrives."""
    order_id = new_order_id()
    await rig.place(order_id, token="tok_blackhole", deadline_s=0.5)
    await rig.reserve(order_id)
    gw = gateway(rig).servicer

    async def asked_past_deadline() -> bool:
        payment = await rig.payment_of(order_id)
        return payment is not None and gw.charge_calls[payment.payment_id] >= 9

    await wait_for(asked_past_deadline, message="three call sequences, the last ones past the deadline")
    payment = await rig.payment_of(order_id)
    assert payment is not None and payment.status == PS.PAYMENT_STATUS_PROCESSING
    assert payment.charge_outcome_unknown
    assert await rig.published(order_id) == []

    gw.blackhole = False
    payment = await rig.wait_payment(order_id, PS.PAYMENT_STATUS_SUCCEEDED)
    assert payment.charge_id == gw.charges[payment.payment_id].charge_id
    assert len(gw.charges) == 1
    await rig.wait_events(order_id, ["succeeded"])


async def test_a_gateway_dropping_some_attempts_keeps_the_breaker_closed(rig: Rig) -> None:
    """tok_flaky fails twice per key, then succeeds. Charged together, eight attempts fail before
    any succeeds; each call is still answered within its retries, so the breaker (which counts
    calls, not attempts) stays closed and no payment waits for a redelivery."""
    breaker = rig.gateway_client.breaker
    orders = [new_order_id() for _ in range(4)]
    for order_id in orders:
        await rig.place(order_id, token="tok_flaky")
    for order_id in orders:
        await rig.payment_of(order_id) or await rig.wait_payment(order_id, PS.PAYMENT_STATUS_PENDING)
    for order_id in orders:
        await rig.reserve(order_id)
    for order_id in orders:
        await rig.wait_payment(order_id, PS.PAYMENT_STATUS_SUCCEEDED, timeout=10)
    assert breaker.current_state == pybreaker.STATE_CLOSED and breaker.fail_counter == 0
    for order_id in orders:
        payment = await rig.payment_of(order_id)
        assert payment is not None and "charge_retried" not in await rig.trail(payment.payment_id)
