"""What payment_svc accepts as input: every violation of a request at once, before anything is read or written."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from payment_svc.domain import AuditEntry, Payment, Status
from payment_svc.messages import status_from_proto
from payment_svc.store import Cursor
from paymesh.chassis.db import as_utc
from paymesh.chassis.validation import Violations, decode_page_token, encode_page_token, page_size
from paymesh.payment.v1 import payment_pb2
from paymesh.payment.v1 import payment_service_pb2 as pb

MAX_REASON = 500
DEFAULT_REFUND_REASON = "refund requested"


@dataclass(frozen=True)
class PaymentQuery:
    """A page of ListPayments: its filters, its size, and where the previous page stopped."""

    order_id: str
    status: Status | None
    page_size: int
    after: Cursor | None

    def next_token(self, last: Payment) -> str:
        return encode_page_token(
            {
                "f": [self.order_id, self.status.value if self.status else ""],
                "t": as_utc(last.create_time).isoformat(),
                "id": last.payment_id,
            }
        )


@dataclass(frozen=True)
class TrailQuery:
    """A page of ListPaymentEvents: the payment, the page size, and the last sequence already sent."""

    payment_id: str
    page_size: int
    after: int

    def next_token(self, last: AuditEntry) -> str:
        return encode_page_token({"p": self.payment_id, "s": last.sequence})


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


def list_payments(request: pb.ListPaymentsRequest) -> PaymentQuery:
    v = Violations()
    size = page_size(v, request.page_size)
    v.identifier("order_id", request.order_id, required=False)
    known = v.check(request.status in payment_pb2.PaymentStatus.values(), "status", "is not a PaymentStatus value")
    cursor = decode_page_token(v, request.page_token)
    status = status_from_proto(request.status) if known else None
    after = None
    if cursor is not None:
        try:
            if cursor.get("f") != [request.order_id, status.value if status else ""]:
                v.add("page_token", "was issued for other filters; repeat the order_id and status it came with")
            else:
                after = Cursor(datetime.fromisoformat(cursor["t"]), str(cursor["id"]))
        except (KeyError, TypeError, ValueError):
            v.add("page_token", "is not a token returned by ListPayments; omit it to start from the first page")
    v.raise_if_any()
    return PaymentQuery(request.order_id, status, size, after)


def list_payment_events(request: pb.ListPaymentEventsRequest) -> TrailQuery:
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
    return TrailQuery(request.payment_id, size, after)


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
