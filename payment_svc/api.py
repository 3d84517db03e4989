"""PaymentService over gRPC: each RPC validates, calls one operation, and maps domain errors in one place.
Every RPC acts for the caller's merchant (its key's, never the request's): another merchant's payment is
NOT_FOUND, exactly as one that does not exist."""

from __future__ import annotations

from typing import Any

import grpc

from payment_svc import validate
from payment_svc.domain import DomainError, InvalidTransition, RefundExceedsBalance
from payment_svc.ledger import Ledger, utcnow
from payment_svc.messages import payment_to_proto, step_to_proto
from payment_svc.refunds import Refunder
from payment_svc.store import PaymentRepository
from paymesh.chassis.auth import Scope, current_principal, requires
from paymesh.chassis.errors import FailedPrecondition, NotFound, ServiceError, Unavailable
from paymesh.chassis.service import Runtime
from paymesh.chassis.validation import page_limit, split_page
from paymesh.payment.v1 import payment_service_pb2 as pb
from paymesh.payment.v1 import payment_service_pb2_grpc

# The method name RefundPayment's request ids are kept under in the request log.
METHOD = "RefundPayment"

Context = grpc.aio.ServicerContext[Any, Any]


def refusal(exc: DomainError) -> ServiceError:
    """The one mapping from the payment state machine's refusals to the client's status."""
    match exc:
        case RefundExceedsBalance():
            return FailedPrecondition(
                f"refund of {exc.asked_minor} exceeds what is left to refund ({exc.left_minor}) on {exc.payment_id}",
                reason="REFUND_EXCEEDS_BALANCE",
                metadata={"payment_id": exc.payment_id, "requested_minor": exc.asked_minor,
                          "refundable_minor": exc.left_minor},
            )
        case InvalidTransition():
            return FailedPrecondition(
                f"payment {exc.payment_id} is {exc.status}; only SUCCEEDED or PARTIALLY_REFUNDED payments can be "
                "refunded",
                reason="PAYMENT_NOT_REFUNDABLE",
                metadata={"payment_id": exc.payment_id, "status": f"PAYMENT_STATUS_{exc.status}"},
            )
        case _:
            return FailedPrecondition(str(exc), reason="PAYMENT_REFUSED")


def not_found(payment_id: str) -> NotFound:
    return NotFound(f"payment {payment_id} not found", reason="PAYMENT_NOT_FOUND", metadata={"payment_id": payment_id})


class PaymentApi(payment_service_pb2_grpc.PaymentServiceServicer):
    def __init__(self, runtime: Runtime, payments: PaymentRepository, ledger: Ledger, refunder: Refunder) -> None:
        self.runtime = runtime
        self.payments = payments
        self.ledger = ledger
        self.refunder = refunder

    @requires(Scope.PAYMENTS_READ)
    async def GetPayment(self, request: pb.GetPaymentRequest, context: Context) -> pb.GetPaymentResponse:  # noqa: N802
        merchant = current_principal().merchant_id
        payment_id = validate.get_payment(request)
        async with self.runtime.db.read() as conn:
            payment = await self.payments.get(conn, merchant, payment_id)
        if payment is None:
            raise not_found(payment_id)
        return pb.GetPaymentResponse(payment=payment_to_proto(payment))

    @requires(Scope.PAYMENTS_READ)
    async def ListPayments(self, request: pb.ListPaymentsRequest, context: Context) -> pb.ListPaymentsResponse:  # noqa: N802
        merchant = current_principal().merchant_id
        query = validate.list_payments(request, self.runtime.page_tokens, merchant)
        async with self.runtime.db.read() as conn:
            page = await self.payments.page(
                conn,
                merchant,
                order_id=query.order_id,
                status=query.status,
                after=query.after,
                limit=page_limit(query.page_size),
            )
        page, last = split_page(page, query.page_size)
        return pb.ListPaymentsResponse(
            payments=[payment_to_proto(p) for p in page],
            next_page_token="" if last is None else query.next_token(last),
        )

    @requires(Scope.PAYMENTS_READ)
    async def ListPaymentEvents(  # noqa: N802
        self, request: pb.ListPaymentEventsRequest, context: Context
    ) -> pb.ListPaymentEventsResponse:
        merchant = current_principal().merchant_id
        query = validate.list_payment_events(request, self.runtime.page_tokens, merchant)
        async with self.runtime.db.read() as conn:
            if await self.payments.get(conn, merchant, query.payment_id) is None:
                raise not_found(query.payment_id)
            rows = await self.payments.trail(
                conn, merchant, query.payment_id, query.after, page_limit(query.page_size)
            )
        trail, last = split_page(rows, query.page_size)
        return pb.ListPaymentEventsResponse(
            events=[step_to_proto(e) for e in trail],
            next_page_token="" if last is None else query.next_token(last),
        )

    @requires(Scope.REFUNDS_WRITE)
    async def RefundPayment(self, request: pb.RefundPaymentRequest, context: Context) -> pb.RefundPaymentResponse:  # noqa: N802
        """Two-phase (AIP-155): REFUNDING and the request id committed, the gateway asked, the answer committed."""
        merchant = current_principal().merchant_id
        refund = validate.refund_payment(request)
        async with self.runtime.db.unit_of_work() as uow:
            stored = await self.runtime.requests.claim(uow, merchant, METHOD, refund.request_id, request)
            if stored is not None:
                return pb.RefundPaymentResponse.FromString(stored)
            payment = await self.payments.get(uow.conn, merchant, refund.payment_id, lock=True)
            if payment is None:
                raise not_found(refund.payment_id)
            try:
                payment.request_refund(refund.amount_minor, refund.reason, refund.request_id)
            except DomainError as exc:
                raise refusal(exc) from exc
            # Not handed to the background: this call asks the gateway itself, right after the commit.
            await self.ledger.record(uow, [payment], [], utcnow(), hand_over=False)
            await uow.commit()
        result = await self.refunder.attempt(merchant, refund.payment_id)
        if result.answered:
            response = result.response if result.response is not None else await self._replay(merchant, request)
            if response is not None:
                return response
        self.refunder.kick(merchant, refund.payment_id)
        raise Unavailable(
            "the gateway did not answer; the refund is being retried: "
            "ask again with the same request_id for its result",
            reason="GATEWAY_UNAVAILABLE",
            metadata={"payment_id": refund.payment_id, "request_id": refund.request_id},
        )

    async def _replay(self, merchant: str, request: pb.RefundPaymentRequest) -> pb.RefundPaymentResponse | None:
        """The answer a concurrent attempt recorded for this merchant's request, read from the request log
        (None while it has none)."""
        async with self.runtime.db.read() as conn:
            stored = await self.runtime.requests.replay(conn, merchant, METHOD, request.request_id, request)
        return None if stored is None else pb.RefundPaymentResponse.FromString(stored)
