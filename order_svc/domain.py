"""The order's state machine: pure Python, no gRPC, NATS or SQL; transitions record the events they cause."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from paymesh.chassis.money import MoneyError, order_total

SAGA_TIMEOUT = "SAGA_TIMEOUT"
CANCEL_REQUESTED = "CANCEL_REQUESTED"  # failure_reason of a CancelOrder that gave no reason
REFUND_FAILED = "REFUND_FAILED"
CAUSE_ORDER_CANCELLED = "ORDER_CANCELLED"  # inventory.released answering order.cancelled


class OrderStatus(StrEnum):
    PENDING = "PENDING"
    AWAITING_PAYMENT = "AWAITING_PAYMENT"
    CONFIRMED = "CONFIRMED"
    REJECTED = "REJECTED"
    PAYMENT_FAILED = "PAYMENT_FAILED"
    CANCELLING = "CANCELLING"
    CANCELLED = "CANCELLED"
    REQUIRES_REVIEW = "REQUIRES_REVIEW"


OPEN = frozenset({OrderStatus.PENDING, OrderStatus.AWAITING_PAYMENT})
CANCELLABLE = OPEN | {OrderStatus.CONFIRMED}
# Where WatchOrder ends. CONFIRMED ends the saga, though the order may still be cancelled.
SETTLED = frozenset(
    {
        OrderStatus.CONFIRMED,
        OrderStatus.REJECTED,
        OrderStatus.PAYMENT_FAILED,
        OrderStatus.CANCELLED,
        OrderStatus.REQUIRES_REVIEW,
    }
)


class DomainError(Exception):
    """Something the order refuses; api.py maps each kind to one gRPC status."""


class InvalidTransition(DomainError):
    def __init__(self, order: Order, action: str) -> None:
        super().__init__(f"order {order.order_id} is {order.status}: cannot {action}")
        self.order_id = order.order_id
        self.status = order.status
        self.action = action


class NotCancellable(InvalidTransition):
    """CancelOrder on an order that settled otherwise (REJECTED, PAYMENT_FAILED, CANCELLED, REQUIRES_REVIEW)."""


class TotalOverflow(DomainError):
    """The lines add up to more than an int64 amount_minor can hold."""


@dataclass(frozen=True)
class Line:
    sku: str
    quantity: int
    unit_price_minor: int


@dataclass(frozen=True)
class Placed:
    order_id: str


@dataclass(frozen=True)
class Confirmed:
    order_id: str
    payment_id: str


@dataclass(frozen=True)
class Cancelled:
    order_id: str
    reason: str
    timed_out: bool


# The final statuses no other event announces: entering one records StatusChanged (order.confirmed tells the rest).
TOLD_BY_STATUS_CHANGE = SETTLED - {OrderStatus.CONFIRMED}


@dataclass(frozen=True)
class StatusChanged:
    """The order entered a final status no other event announces (TOLD_BY_STATUS_CHANGE): webhook_svc's source."""

    order_id: str
    status: OrderStatus


Event = Placed | Confirmed | Cancelled | StatusChanged


def new_order_id() -> str:
    return f"ord_{uuid.uuid4().hex}"


def total_of(lines: tuple[Line, ...] | list[Line]) -> int:
    try:
        return order_total([(line.quantity, line.unit_price_minor) for line in lines])
    except MoneyError as exc:
        raise TotalOverflow(str(exc)) from None


@dataclass
class Order:
    order_id: str
    merchant_id: str  # who placed it: every read and write of the order is the merchant's own
    customer_id: str
    lines: tuple[Line, ...]
    currency: str
    amount_minor: int
    payment_method_token: str
    status: OrderStatus
    create_time: datetime
    update_time: datetime
    deadline: datetime
    failure_reason: str = ""
    payment_id: str = ""
    inventory_answered: bool = False
    payment_answered: bool = False
    refund_failed: bool = False
    version: int = 1  # +1 on every change; lets a watcher tell a newer state from an older one
    events: list[Event] = field(default_factory=list, compare=False, repr=False)

    @classmethod
    def place(
        cls,
        *,
        merchant_id: str,
        customer_id: str,
        lines: list[Line],
        currency: str,
        payment_method_token: str,
        now: datetime,
        timeout: timedelta,
        order_id: str | None = None,
    ) -> Order:
        if not merchant_id:
            raise ValueError("an order belongs to a merchant: merchant_id is required")
        order = cls(
            order_id=order_id or new_order_id(),
            merchant_id=merchant_id,
            customer_id=customer_id,
            lines=tuple(lines),
            currency=currency,
            amount_minor=total_of(lines),
            payment_method_token=payment_method_token,
            status=OrderStatus.PENDING,
            create_time=now,
            update_time=now,
            deadline=now + timeout,
        )
        order.events.append(Placed(order.order_id))
        return order

    # -- answers from inventory and payment ---------------------------------------

    def reserve(self, now: datetime) -> None:
        """inventory.reserved: every line is held; the charge comes next."""
        self._require({OrderStatus.PENDING}, "accept a reservation")
        self._move(OrderStatus.AWAITING_PAYMENT, now)

    def reject(self, reason: str, now: datetime) -> None:
        """inventory.rejected: a line could not be held, so none is."""
        self._require(OPEN, "be rejected")
        self.failure_reason = reason
        self._move(OrderStatus.REJECTED, now)

    def pay(self, payment_id: str, now: datetime) -> None:
        """payment.succeeded; it may overtake inventory.reserved, so PENDING confirms too."""
        self._require(OPEN, "be paid")
        self.payment_id = payment_id
        self._move(OrderStatus.CONFIRMED, now)
        self.events.append(Confirmed(self.order_id, payment_id))

    def fail_payment(self, payment_id: str, failure_code: str, now: datetime) -> None:
        """payment.failed: declined, or the gateway never answered in time."""
        self._require(OPEN, "fail its payment")
        self.payment_id = payment_id or self.payment_id
        self.failure_reason = failure_code
        self._move(OrderStatus.PAYMENT_FAILED, now)

    # -- cancellation ----------------------------------------------------------------

    def cancel(self, reason: str, now: datetime) -> bool:
        """CancelOrder. False when a cancel is already under way: nothing more to do."""
        if self.status == OrderStatus.CANCELLING:
            return False
        if self.status not in CANCELLABLE:
            raise NotCancellable(self, "be cancelled")
        self._start_cancel(reason or CANCEL_REQUESTED, now, timed_out=False)
        return True

    def time_out(self, now: datetime) -> None:
        """The saga's deadline passed with the order still open."""
        self._require(OPEN, "time out")
        if now < self.deadline:
            raise InvalidTransition(self, f"time out before its deadline {self.deadline.isoformat()}")
        self._start_cancel(SAGA_TIMEOUT, now, timed_out=True)

    def inventory_released(self, cause: str, now: datetime) -> bool:
        """inventory.released; only a release caused by our cancel answers it. False for a duplicate."""
        self._require({OrderStatus.CANCELLING}, f"count a release caused by {cause or 'nothing'}")
        if cause != CAUSE_ORDER_CANCELLED:
            raise InvalidTransition(self, f"count a release caused by {cause or 'nothing'} as the cancel's")
        if self.inventory_answered:
            return False
        self.inventory_answered = True
        self._settle_cancel(now)
        return True

    def payment_returned(self, payment_id: str, cause: str, now: datetime) -> bool:
        """payment.voided or payment.refunded answering our cancel: the money side is done.

        False for a duplicate. A refund a client asked for (cause REFUND_REQUESTED) that lands
        during the cancel is not the cancel's answer: payment_svc refunds the rest and answers then.
        """
        self._require({OrderStatus.CANCELLING}, "take back its payment")
        if cause != CAUSE_ORDER_CANCELLED:
            raise InvalidTransition(self, f"count a payment answer caused by {cause or 'nothing'} as the cancel's")
        if self.payment_answered:
            return False
        self.payment_id = payment_id or self.payment_id
        self.payment_answered = True
        self._settle_cancel(now)
        return True

    def refund_failure(self, payment_id: str, failure_code: str, cause: str, now: datetime) -> bool:
        """payment.refund_failed: a person must settle the money. False for a duplicate.

        While cancelling, only the failure that answers the cancel counts (payment_svc answers
        every order.cancelled, with the failure again if an earlier refund failed)."""
        if self.refund_failed and self.status in {OrderStatus.CANCELLING, OrderStatus.REQUIRES_REVIEW}:
            return False  # the same failure again
        self._require({OrderStatus.CANCELLING, OrderStatus.CONFIRMED}, "record a failed refund")
        if self.status == OrderStatus.CANCELLING and cause != CAUSE_ORDER_CANCELLED:
            raise InvalidTransition(self, f"count a failed refund caused by {cause or 'nothing'} as the cancel's")
        self.payment_id = payment_id or self.payment_id
        self.refund_failed = True
        self.failure_reason = f"{REFUND_FAILED}: {failure_code}" if failure_code else REFUND_FAILED
        if self.status == OrderStatus.CONFIRMED:
            self._move(OrderStatus.REQUIRES_REVIEW, now)
            return True
        self.payment_answered = True
        self._settle_cancel(now)
        return True

    def pull_events(self) -> list[Event]:
        """The events recorded since the last call, for the outbox."""
        events, self.events = self.events, []
        return events

    # -- helpers -----------------------------------------------------------------------

    def _start_cancel(self, reason: str, now: datetime, *, timed_out: bool) -> None:
        self.failure_reason = reason
        self.inventory_answered = False
        self.payment_answered = False
        self._move(OrderStatus.CANCELLING, now)
        self.events.append(Cancelled(self.order_id, reason, timed_out))

    def _settle_cancel(self, now: datetime) -> None:
        if not (self.inventory_answered and self.payment_answered):
            self._touch(now)
            return
        self._move(OrderStatus.REQUIRES_REVIEW if self.refund_failed else OrderStatus.CANCELLED, now)

    def _require(self, allowed: set[OrderStatus] | frozenset[OrderStatus], action: str) -> None:
        if self.status not in allowed:
            raise InvalidTransition(self, action)

    def _move(self, status: OrderStatus, now: datetime) -> None:
        self.status = status
        self._touch(now)
        if status in TOLD_BY_STATUS_CHANGE:
            self.events.append(StatusChanged(self.order_id, status))

    def _touch(self, now: datetime) -> None:
        self.update_time = max(now, self.update_time)
        self.version += 1
