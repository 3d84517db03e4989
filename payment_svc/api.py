"""PaymentService over gRPC: validate, call one operation, map domain errors in one place."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from payment_svc.domain import DomainError, InvalidTransition, RefundExceedsBalance
from payment_svc.handlers import utcnow
from payment_svc.messages import payment_message, status_name, step_message
from payment_svc.refunds import METHOD, Refunder
from payment_svc.store import PaymentStore
from paymesh.chassis.errors import FailedPrecondition, NotFound, ServiceError, Unavailable
from paymesh.chassis.service import Runtime
from paymesh.chassis.validation import Violations, decode_page_token, encode_page_token, page_size
from paymesh.payment.v1 import payment_pb2, payment_service_pb2, payment_service_pb2_grpc

MAX_REASON = 500


def service_error(exc: DomainError) -> ServiceError:
    """The one mapping from the payment state machine's refusals to gRPC statuses."""
    if isinstance(exc, RefundExceedsBalance):
        return FailedPrecondition(
            f"refund of {exc.asked_minor} exceeds what is left to refund ({exc.left_minor}) on {exc.payment_id}",
            reason="REFUND_EXCEEDS_BALANCE",
            metadata={"payment_id": exc.payment_id, "requested_minor": exc.asked_minor,
                      "refundable_minor": exc.left_minor},
        )
    if isinstance(exc, InvalidTransition):
        return FailedPrecondition(
            f"payment {exc.payment_id} is {exc.status}; only SUCCEEDED or PARTIALLY_REFUNDED payments can be refunded",
            reason="PAYMENT_NOT_REFUNDABLE",
            metadata={"payment_id": exc.payment_id, "status": f"PAYMENT_STATUS_{exc.status}"},
        )
    return FailedPrecondition(str(exc), reason="PAYMENT_REFUSED")


def not_found(payment_id: str) -> NotFound:
    return NotFound(f"payment {payment_id} not found", reason="PAYMENT_NOT_FOUND", metadata={"payment_id": payment_id})


class PaymentApi(payment_service_pb2_grpc.PaymentServiceServicer):
    def __init__(self, runtime: Runtime, store: PaymentStore, refunder: Refunder) -> None:
        self.runtime = runtime
        self.store = store
        self.refunder = refunder

    async def GetPayment(self, request: Any, context: Any) -> payment_service_pb2.GetPaymentResponse:  # noqa: N802
        v = Violations()
        v.identifier("payment_id", request.payment_id)
        v.raise_if_any()
        async with self.runtime.db.read() as conn:
            row = await self.store.get(conn, request.payment_id)
        if row is None:
            raise not_found(request.payment_id)
        return payment_service_pb2.GetPaymentResponse(payment=payment_message(row))

    async def ListPayments(self, request: Any, context: Any) -> payment_service_pb2.ListPaymentsResponse:  # noqa: N802
        v = Violations()
        size = page_size(v, request.page_size)
        v.identifier("order_id", request.order_id, required=False)
        v.check(request.status in payment_pb2.PaymentStatus.values(), "status", "is not a PaymentStatus value")
        cursor = decode_page_token(v, request.page_token)
        status = status_name(request.status) if request.status in payment_pb2.PaymentStatus.values() else ""
        after = None
        if cursor is not None:
            try:
                if cursor.get("f") != [request.order_id, status]:
                    v.add("page_token", "was issued for other filters; repeat the order_id and status it came with")
                else:
                    after = (datetime.fromisoformat(cursor["t"]), str(cursor["id"]))
            except (KeyError, TypeError, ValueError):
                v.add("page_token", "is not a token returned by ListPayments; omit it to start from the first page")
        v.raise_if_any()
        async with self.runtime.db.read() as conn:
            rows = await self.store.page(conn, order_id=request.order_id, status=status, after=after, limit=size + 1)
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            last = rows[-1]
            token = encode_page_token(
                {"f": [request.order_id, status], "t": last.create_time.isoformat(), "id": last.payment.payment_id}
            )
        return payment_service_pb2.ListPaymentsResponse(
            payments=[payment_message(r) for r in rows], next_page_token=token
        )

    async def ListPaymentEvents(self, request: Any, context: Any) -> payment_service_pb2.ListPaymentEventsResponse:  # noqa: N802
        v = Violations()
        v.identifier("payment_id", request.payment_id)
        size = page_size(v, request.page_size)
        cursor = decode_page_token(v, request.page_token)
        after = 0
        if cursor is not None:
            if cursor.get("p") != request.payment_id or not isinstance(cursor.get("s"), int):
                v.add("page_token", "was issued for another payment; omit it to start from the first page")
            else:
                after = cursor["s"]
        v.raise_if_any()
        async with self.runtime.db.read() as conn:
            if await self.store.get(conn, request.payment_id) is None:
                raise not_found(request.payment_id)
            rows = await self.store.steps_page(conn, request.payment_id, after, size + 1)
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            token = encode_page_token({"p": request.payment_id, "s": rows[-1].sequence})
        return payment_service_pb2.ListPaymentEventsResponse(
            events=[step_message(r) for r in rows], next_page_token=token
        )

    async def RefundPayment(self, request: Any, context: Any) -> payment_service_pb2.RefundPaymentResponse:  # noqa: N802
        """Two-phase (AIP-155): REFUNDING and the request id committed, the gateway asked, the answer committed."""
        v = Violations()
        v.request_id("request_id", request.request_id)
        v.identifier("payment_id", request.payment_id)
        v.check(request.amount_minor >= 0, "amount_minor", "must not be negative; 0 refunds what is left")
        v.check(len(request.reason) <= MAX_REASON, "reason", f"must be at most {MAX_REASON} characters")
        v.raise_if_any()
        async with self.runtime.db.unit_of_work() as uow:
            stored = await self.runtime.requests.claim(uow, METHOD, request.request_id, request)
            if stored is not None:
                return payment_service_pb2.RefundPaymentResponse.FromString(stored)
            row = await self.store.get(uow.conn, request.payment_id, lock=True)
            if row is None:
                raise not_found(request.payment_id)
            payment = row.payment
            try:
                payment.request_refund(request.amount_minor, request.reason or "refund requested", request.request_id)
            except DomainError as exc:
                raise service_error(exc) from exc
            # Not handed to the background: this call asks the gateway itself, right after the commit.
            await self.refunder.recorder.record(uow, [payment], [], utcnow(), hand_over=False)
            await uow.commit()
        result = await self.refunder.attempt(request.payment_id)
        if result.answered and result.response is not None:
            return result.response
        self.refunder.kick(request.payment_id)
        raise Unavailable(
            "the gateway did not answer; the refund is being retried: "
            "ask again with the same request_id for its result",
            reason="GATEWAY_UNAVAILABLE",
            metadata={"payment_id": request.payment_id, "request_id": request.request_id},
        )

