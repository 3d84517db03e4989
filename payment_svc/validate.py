"""What payment_svc accepts as input: every violation of a request at once, before anything is read or written."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from payment_svc.domain import AuditEntry, Payment, Status
from payment_svc.messages import status_from_proto
from payment_svc.store import Cursor
from paymesh.chassis.db import as_utc
from paymesh.chassis.page_tokens import PageTokens, TokenBinding
from paymesh.chassis.validation import Violations, page_size
from paymesh.payment.v1 import payment_pb2
from paymesh.payment.v1 import payment_service_pb2 as pb

MAX_REASON = 500
DEFAULT_REFUND_REASON = "refund requested"
_METHODS = pb.DESCRIPTOR.services_by_name["PaymentService"].methods_by_name
LIST_PAYMENTS = _METHODS["ListPayments"].full_name
LIST_PAYMENT_EVENTS = _METHODS["ListPaymentEvents"].full_name


@dataclass(frozen=True)
class PaymentQuery:
    """A page of ListPayments: its filters, its size, and where the previous page stopped."""

    order_id: str
    status: Status | None
    page_size: int
    after: Cursor | None
    tokens: TokenBinding = field(compare=False, repr=False)

    def next_token(self, last: Payment) -> str:
        return self.tokens.issue([as_utc(last.create_time).isoformat(), last.payment_id])


@dataclass(frozen=True)
class TrailQuery:
    """A page of ListPaymentEvents: the payment, the page size, and the last sequence already sent."""

    payment_id: str
    page_size: int
    after: int
    tokens: TokenBinding = field(compare=False, repr=False)

    def next_token(self, last: AuditEntry) -> str:
        return self.tokens.issue([str(last.sequence)])


@dataclass(frozen=True)
class RequestedRefund:
    """A client's refund: 0 as the amount refunds what is left."""

    request_id: str
    payment_id: str
    amount_minor: int
    reason: str


def get_payment(request: pb.GetPaymentRequest) -> str:
    v = Violations()
    v.identifier("payment_id", request.payment_id)
    v.raise_if_any()
    return request.payment_id


def list_payments(request: pb.ListPaymentsRequest, pages: PageTokens, merchant_id: str) -> PaymentQuery:
    v = Violations()
    size = page_size(v, request.page_size)
    v.identifier("order_id", request.order_id, required=False)
    known = v.check(request.status in payment_pb2.PaymentStatus.values(), "status", "is not a PaymentStatus value")
    tokens = pages.bind(LIST_PAYMENTS, merchant_id, [request.order_id, str(request.status)])
    cursor = tokens.read(v, request.page_token, 2)
    v.raise_if_any()
    status = status_from_proto(request.status) if known else None
    # A verified token holds what next_token wrote: an ISO time and a payment id.
    after = None if cursor is None else Cursor(datetime.fromisoformat(cursor[0]), cursor[1])
    return PaymentQuery(request.order_id, status, size, after, tokens)


def list_payment_events(request: pb.ListPaymentEventsRequest, pages: PageTokens, merchant_id: str) -> TrailQuery:
    v = Violations()
    v.identifier("payment_id", request.payment_id)
    size = page_size(v, request.page_size)
    tokens = pages.bind(LIST_PAYMENT_EVENTS, merchant_id, [request.payment_id])
    cursor = tokens.read(v, request.page_token, 1)
    v.raise_if_any()
    return TrailQuery(request.payment_id, size, 0 if cursor is None else int(cursor[0]), tokens)


def refund_payment(request: pb.RefundPaymentRequest) -> RequestedRefund:
    v = Violations()
    v.request_id("request_id", request.request_id)
    v.identifier("payment_id", request.payment_id)
    v.check(request.amount_minor >= 0, "amount_minor", "must not be negative; 0 refunds what is left")
    v.check(len(request.reason) <= MAX_REASON, "reason", f"must be at most {MAX_REASON} characters")
    v.raise_if_any()
    return RequestedRefund(
        request.request_id, request.payment_id, request.amount_minor, request.reason or DEFAULT_REFUND_REASON
    )
