"""PaymentService over gRPC: RefundPayment (AIP-155, two-phase), reads, paging, and bad input."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from paymesh.payment.v1 import payment_pb2, payment_service_pb2
from tests.conftest import wait_for
from tests.integration.payment.conftest import PS, Rig, gw, new_order_id
from tests.keys import MERCHANT_A

pytestmark = pytest.mark.timeout(30)
pb = payment_service_pb2


async def charged(rig: Rig, amount: int = 1000, token: str = "tok_visa") -> payment_pb2.Payment:
    order_id = new_order_id()
    await rig.place(order_id, token=token, amount=amount)
    await rig.reserve(order_id)
    return await rig.wait_payment(order_id, PS.PAYMENT_STATUS_SUCCEEDED)


def refund(payment_id: str, amount: int, request_id: str | None = None, reason: str = "goodwill") -> Any:
    return pb.RefundPaymentRequest(request_id=request_id or str(uuid.uuid4()), payment_id=payment_id,
                                   amount_minor=amount, reason=reason)


def error_of(err: grpc.aio.AioRpcError) -> tuple[str, list[str]]:
    """The ErrorInfo reason and the fields of the BadRequest violations."""
    status = rpc_status.from_call(err)
    assert status is not None
    reason, fields = "", []
    for detail in status.details:
        info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
        if detail.Unpack(info):
            reason = info.reason
            assert info.domain == "paymesh.dev"
        elif detail.Unpack(bad):
            fields = [v.field for v in bad.field_violations]
    return reason, fields


async def test_partial_refund_then_the_rest_with_replay_and_reuse(rig: Rig) -> None:
    payment = await charged(rig, amount=1000)
    first = refund(payment.payment_id, 300)
    reply = await rig.payments.RefundPayment(first)
    assert (reply.payment.status, reply.payment.refunded_minor, reply.amount_minor) == (
        PS.PAYMENT_STATUS_PARTIALLY_REFUNDED, 300, 300)
    gateway_key = f"refund:{payment.payment_id}:1"  # the payment's, not the client's request_id
    assert reply.refund_id == gw(rig).refunds[gateway_key].refund.refund_id

    # Same request_id, same request: the first answer, and no second refund at the gateway.
    assert await rig.payments.RefundPayment(first) == reply
    assert gw(rig).refund_calls[gateway_key] == 1
    # Same request_id, another request: refused.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rig.payments.RefundPayment(refund(payment.payment_id, 200, request_id=first.request_id))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS and error_of(err.value)[0] == "REQUEST_ID_REUSED"
    # More than what is left: refused, nothing changed.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rig.payments.RefundPayment(refund(payment.payment_id, 701))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_of(err.value)[0] == "REFUND_EXCEEDS_BALANCE"

    rest = await rig.payments.RefundPayment(refund(payment.payment_id, 0))
    assert (rest.payment.status, rest.payment.refunded_minor, rest.amount_minor) == (
        PS.PAYMENT_STATUS_REFUNDED, 1000, 700)
    assert gw(rig).charges[payment.payment_id].refunded_minor == 1000
    # A refunded payment cannot be refunded again.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rig.payments.RefundPayment(refund(payment.payment_id, 1))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_of(err.value)[0] == "PAYMENT_NOT_REFUNDABLE"
    events = await rig.wait_events(payment.order_id, ["succeeded", "refunded", "refunded"])
    assert [e.message.amount_minor for e in events[1:]] == [300, 700]
    assert [e.message.refunded_minor for e in events[1:]] == [300, 1000]
    assert (await rig.trail(payment.payment_id))[-4:] == ["refund_requested", "refunded", "refund_requested",
                                                           "refunded"]


async def test_an_answer_recorded_by_a_concurrent_attempt_is_replayed_and_nothing_written(rig: Rig) -> None:
    """RefundPayment whose refund another attempt recorded first reads the answer back via the request log."""
    payment = await charged(rig, amount=600)
    first = refund(payment.payment_id, 100)
    reply = await rig.payments.RefundPayment(first)
    api = rig.host.wiring.services[0].servicer
    assert await api._replay(MERCHANT_A, first) == reply
    unseen = refund(payment.payment_id, 100)
    assert await api._replay(MERCHANT_A, unseen) is None
    # The replay only read: the id is still new and acts once.
    again = await rig.payments.RefundPayment(unseen)
    assert (again.amount_minor, again.payment.refunded_minor) == (100, 200)


async def test_refund_of_a_payment_not_charged_is_refused(rig: Rig) -> None:
    order_id = new_order_id()
    await rig.place(order_id)
    pending = await rig.wait_payment(order_id, PS.PAYMENT_STATUS_PENDING)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rig.payments.RefundPayment(refund(pending.payment_id, 0))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_of(err.value)[0] == "PAYMENT_NOT_REFUNDABLE"


async def test_refund_while_the_gateway_is_down_finishes_in_the_background(rig: Rig) -> None:
    payment = await charged(rig, amount=500)
    await rig.gateway.stop()  # type: ignore[union-attr]
    request = refund(payment.payment_id, 200)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rig.payments.RefundPayment(request)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rig.payments.RefundPayment(request)
    assert err.value.code() == grpc.StatusCode.ABORTED, "still running: never acts twice"
    await rig.gateway.start()  # type: ignore[union-attr]
    await rig.wait_payment(payment.order_id, PS.PAYMENT_STATUS_PARTIALLY_REFUNDED, timeout=15)

    async def answered() -> Any:
        try:
            return await rig.payments.RefundPayment(request)
        except grpc.aio.AioRpcError:
            return None

    reply = await wait_for(answered, message="the stored answer")
    assert (reply.amount_minor, reply.payment.refunded_minor) == (200, 200)
    assert gw(rig).charges[payment.payment_id].refunded_minor == 200


async def test_reads_and_paging(rig: Rig) -> None:
    payments = [await charged(rig, amount=100 + i) for i in range(3)]
    got = await rig.payments.GetPayment(pb.GetPaymentRequest(payment_id=payments[0].payment_id))
    assert got.payment == payments[0] or got.payment.payment_id == payments[0].payment_id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rig.payments.GetPayment(pb.GetPaymentRequest(payment_id="pay_missing"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and error_of(err.value)[0] == "PAYMENT_NOT_FOUND"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rig.payments.ListPaymentEvents(pb.ListPaymentEventsRequest(payment_id="pay_missing"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    seen, token = [], ""
    while True:
        page = await rig.payments.ListPayments(pb.ListPaymentsRequest(page_size=2, page_token=token))
        seen += [p.payment_id for p in page.payments]
        token = page.next_page_token
        if not token:
            break
    assert seen == [p.payment_id for p in reversed(payments)], "newest first, each once"
    only = await rig.payments.ListPayments(pb.ListPaymentsRequest(order_id=payments[1].order_id))
    assert [p.payment_id for p in only.payments] == [payments[1].payment_id]
    none = await rig.payments.ListPayments(pb.ListPaymentsRequest(status=PS.PAYMENT_STATUS_REFUNDED))
    assert list(none.payments) == []
    first = await rig.payments.ListPayments(pb.ListPaymentsRequest(page_size=1))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rig.payments.ListPayments(pb.ListPaymentsRequest(page_size=1, page_token=first.next_page_token,
                                                               status=PS.PAYMENT_STATUS_SUCCEEDED))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and error_of(err.value)[1] == ["page_token"]


BAD_INPUT = [
    ("GetPayment", pb.GetPaymentRequest(), ["payment_id"]),
    ("GetPayment", pb.GetPaymentRequest(payment_id="pay/../x"), ["payment_id"]),
    ("ListPayments", pb.ListPaymentsRequest(page_size=-1, order_id="bad id", status=42, page_token="%%%"),
     ["page_size", "order_id", "status", "page_token"]),
    ("ListPaymentEvents", pb.ListPaymentEventsRequest(page_size=-5), ["payment_id", "page_size"]),
    ("RefundPayment", pb.RefundPaymentRequest(), ["request_id", "payment_id"]),
    ("RefundPayment", pb.RefundPaymentRequest(request_id="not-a-uuid", payment_id="PAYMENT", amount_minor=-1,
                                              reason="x" * 501), ["request_id", "amount_minor", "reason"]),
]


async def test_bad_input_is_refused_with_every_violation_and_changes_nothing(rig: Rig) -> None:
    payment = await charged(rig, amount=800)
    for method, request, fields in BAD_INPUT:
        if method == "RefundPayment" and request.payment_id == "PAYMENT":
            request.payment_id = payment.payment_id  # valid id: only the other fields are wrong
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await getattr(rig.payments, method)(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, request)
        reason, violated = error_of(err.value)
        assert (reason, violated) == ("INVALID_ARGUMENT", fields), (method, request)
    after = (await rig.payments.GetPayment(pb.GetPaymentRequest(payment_id=payment.payment_id))).payment
    assert (after.status, after.refunded_minor, after.update_time) == (
        PS.PAYMENT_STATUS_SUCCEEDED, 0, payment.update_time)
    assert gw(rig).refund_calls == {}
