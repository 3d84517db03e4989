"""The payment state machine, in minor units: each step refuses what docs/saga.md does not allow,
and records its audit entry and the saga events it causes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

GATEWAY_UNAVAILABLE = "GATEWAY_UNAVAILABLE"


class Status(StrEnum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    REFUNDING = "REFUNDING"
    REFUNDED = "REFUNDED"
    PARTIALLY_REFUNDED = "PARTIALLY_REFUNDED"
    REFUND_FAILED = "REFUND_FAILED"
    VOIDED = "VOIDED"


REFUNDABLE = frozenset({Status.SUCCEEDED, Status.PARTIALLY_REFUNDED})


class DomainError(Exception):
    """A refusal of the payment state machine."""


class InvalidTransition(DomainError):
    def __init__(self, payment_id: str, status: Status, action: str) -> None:
        super().__init__(f"payment {payment_id} is {status}: cannot {action}")
        self.payment_id = payment_id
        self.status = status
        self.action = action


class RefundExceedsBalance(DomainError):
    def __init__(self, payment_id: str, asked_minor: int, left_minor: int) -> None:
        super().__init__(f"payment {payment_id}: refund of {asked_minor} asked, only {left_minor} left to refund")
        self.payment_id = payment_id
        self.asked_minor = asked_minor
        self.left_minor = left_minor


class ChargeMayHaveHappened(DomainError):
    """Giving up would be blind: an attempt may have reached the gateway and charged."""


@dataclass(frozen=True)
class Step:
    """One line of the audit trail."""

    type: str
    from_status: Status | None
    to_status: Status
    amount_minor: int = 0
    detail: str = ""


# order_svc cancels a saga at its deadline (its sweeper runs every 0.5 s); payment_svc gives
# up on an unreachable gateway only after this grace, so such a saga ends CANCELLED, as the
# design says, with the payment voided, rather than racing to PAYMENT_FAILED.
GIVE_UP_GRACE = timedelta(seconds=5)


# The saga events a payment causes; handlers turn them into protobuf messages.
@dataclass(frozen=True)
class Succeeded:
    merchant_id: str
    payment_id: str
    order_id: str
    charge_id: str
    amount_minor: int
    currency: str


@dataclass(frozen=True)
class Failed:
    merchant_id: str
    payment_id: str
    order_id: str
    failure_code: str
    reason: str


@dataclass(frozen=True)
class Refunded:
    merchant_id: str
    payment_id: str
    order_id: str
    amount_minor: int
    refund_id: str
    currency: str
    refunded_minor: int
    answers_cancel: bool  # the money side of an order.cancelled is settled by this


@dataclass(frozen=True)
class Voided:
    merchant_id: str
    payment_id: str  # empty for a tombstone: order.placed was never seen
    order_id: str


@dataclass(frozen=True)
class RefundFailed:
    merchant_id: str
    payment_id: str
    order_id: str
    failure_code: str
    reason: str
    answers_cancel: bool


DomainEvent = Succeeded | Failed | Refunded | Voided | RefundFailed


@dataclass(frozen=True)
class RefundRequest:
    """A refund asked of the gateway: its amount and the idempotency key every retry reuses."""

    merchant_id: str
    refund_id: str
    payment_id: str
    amount_minor: int
    idempotency_key: str
    reason: str = ""
    request_id: str = ""  # the RefundPayment request_id, when a client asked


@dataclass(frozen=True)
class Refund:
    """A refund as stored: what was asked of the gateway, and what is known of its answer."""

    request: RefundRequest
    status: str  # PENDING, SUCCEEDED, FAILED
    gateway_refund_id: str
    outcome_unknown: bool  # an attempt may have reached the gateway and refunded
    create_time: datetime


@dataclass(frozen=True)
class AuditEntry:
    """A step as the audit trail keeps it: where it stands in the trail, and when it was written."""

    sequence: int  # across all payments: the order steps were written in
    position: int  # 1-based, in this payment's trail
    merchant_id: str
    payment_id: str
    order_id: str
    type: str
    from_status: Status | None
    to_status: Status
    amount_minor: int
    detail: str
    create_time: datetime


@dataclass
class Payment:
    merchant_id: str  # the merchant whose order this pays; every read and write is by it
    payment_id: str
    order_id: str
    amount_minor: int
    currency: str
    payment_method_token: str
    deadline: datetime
    # When first written and last changed; the repository sets update_time when it writes a change.
    create_time: datetime
    update_time: datetime
    status: Status = Status.PENDING
    refunded_minor: int = 0
    charge_id: str = ""
    failure_code: str = ""
    cancel_requested: bool = False
    # An attempt answered DEADLINE_EXCEEDED (or worse): the gateway may have charged.
    charge_outcome_unknown: bool = False
    # Gateway call sequences started and not yet closed; one left open by a crash
    # counts as "may have charged" for ever, which is the safe side.
    charge_calls_open: int = 0
    refund_seq: int = 0
    is_new: bool = False
    changed: bool = False
    steps: list[Step] = field(default_factory=list)
    events: list[DomainEvent] = field(default_factory=list)
    new_refunds: list[RefundRequest] = field(default_factory=list)

    @property
    def idempotency_key(self) -> str:
        return self.payment_id

    @property
    def refundable_minor(self) -> int:
        return self.amount_minor - self.refunded_minor

    @property
    def may_have_charged(self) -> bool:
        return self.charge_outcome_unknown or self.charge_calls_open > 0

    # -- creation -------------------------------------------------------------------

    @classmethod
    def place(
        cls,
        merchant_id: str,
        payment_id: str,
        order_id: str,
        amount_minor: int,
        currency: str,
        token: str,
        deadline: datetime,
        now: datetime,
    ) -> Payment:
        payment = cls(merchant_id, payment_id, order_id, amount_minor, currency, token, deadline, now, now,
                      is_new=True)
        payment._record(Step("created", None, Status.PENDING, amount_minor, f"from order.placed of {order_id}"))
        return payment

    @classmethod
    def tombstone(cls, merchant_id: str, payment_id: str, order_id: str, now: datetime) -> Payment:
        """order.cancelled before order.placed: a VOIDED row, so a late order.placed is ignored."""
        payment = cls(
            merchant_id, payment_id, order_id, 0, "", "", now, now, now, status=Status.VOIDED, cancel_requested=True,
            is_new=True,
        )
        payment._record(Step("voided", None, Status.VOIDED, 0, "order cancelled before order.placed was seen"))
        payment.events.append(Voided(merchant_id, "", order_id))
        return payment

    # -- the charge -----------------------------------------------------------------

    def start_charge(self) -> None:
        """Before a gateway call sequence: PENDING → PROCESSING; a PROCESSING payment asks again."""
        self._require({Status.PENDING, Status.PROCESSING}, "charge")
        if self.status is Status.PENDING:
            self._move(Status.PROCESSING, "charge_requested", self.amount_minor, f"idempotency key {self.payment_id}")
        self.charge_calls_open += 1
        self.changed = True

    def charge_unresolved(self, may_have_reached: bool, detail: str) -> None:
        """A call sequence ended without an answer: the payment stays PROCESSING."""
        self._require({Status.PROCESSING}, "record an unanswered charge")
        self.charge_calls_open = max(0, self.charge_calls_open - 1)
        self.charge_outcome_unknown = self.charge_outcome_unknown or may_have_reached
        suffix = "; it may have reached the gateway" if may_have_reached else "; it never reached the gateway"
        self._record(Step("charge_retried", Status.PROCESSING, Status.PROCESSING, 0, detail + suffix))

    def charge_succeeded(self, charge_id: str) -> None:
        self._require({Status.PROCESSING}, "record a charge")
        self.charge_id = charge_id
        self.charge_calls_open = 0
        self._move(Status.SUCCEEDED, "charge_succeeded", self.amount_minor, f"charge {charge_id}")
        self.events.append(
            Succeeded(self.merchant_id, self.payment_id, self.order_id, charge_id, self.amount_minor, self.currency)
        )
        if self.cancel_requested:
            self._refund(0, "order cancelled while the charge was in flight")

    def charge_declined(self, code: str, reason: str) -> None:
        self._require({Status.PROCESSING}, "record a decline")
        self.charge_calls_open = 0
        if self.cancel_requested:
            self._move(Status.VOIDED, "voided", 0, f"declined ({code}) after the order was cancelled")
            self.events.append(Voided(self.merchant_id, self.payment_id, self.order_id))
            return
        self.failure_code = code
        self._move(Status.FAILED, "charge_declined", self.amount_minor, f"{code}: {reason}")
        self.events.append(Failed(self.merchant_id, self.payment_id, self.order_id, code, reason))

    def can_give_up(self, now: datetime) -> bool:
        return self.status is Status.PROCESSING and now >= self.deadline + GIVE_UP_GRACE and not self.may_have_charged

    def give_up(self, now: datetime) -> None:
        """Past the saga deadline with no attempt that may have charged: FAILED (VOIDED if cancelled)."""
        self._require({Status.PROCESSING}, "give up the charge")
        if now < self.deadline + GIVE_UP_GRACE:
            raise InvalidTransition(self.payment_id, self.status, "give up before the saga deadline")
        if self.may_have_charged:
            raise ChargeMayHaveHappened(f"payment {self.payment_id}: an attempt may have charged; keep asking")
        if self.cancel_requested:
            self._move(Status.VOIDED, "voided", 0, "gateway unreachable; the order was cancelled")
            self.events.append(Voided(self.merchant_id, self.payment_id, self.order_id))
            return
        reason = "the gateway could not be reached before the saga deadline"
        self.failure_code = GATEWAY_UNAVAILABLE
        self._move(Status.FAILED, "charge_failed", 0, reason)
        self.events.append(Failed(self.merchant_id, self.payment_id, self.order_id, GATEWAY_UNAVAILABLE, reason))

    # -- cancel ---------------------------------------------------------------------

    def cancel(self, reason: str) -> None:
        """order.cancelled, in every status: void, wait for the charge, refund, or answer again."""
        was_requested, self.cancel_requested = self.cancel_requested, True
        status = self.status
        if status is Status.PENDING:
            self._move(Status.VOIDED, "voided", 0, f"order cancelled before the charge: {reason}")
            self.events.append(Voided(self.merchant_id, self.payment_id, self.order_id))
        elif status in (Status.PROCESSING, Status.REFUNDING):
            if not was_requested:
                self._record(Step("cancel_requested", status, status, 0, f"answered when the gateway does: {reason}"))
            self.changed = True
        elif status in REFUNDABLE:
            self._refund(0, f"order cancelled: {reason}")
        else:
            self._answer_again(reason)

    def _answer_again(self, reason: str) -> None:
        """A terminal payment answers each new order.cancelled (order_svc needs one answer per cancel)."""
        status = self.status
        self._record(Step("cancel_answered", status, status, 0, reason))
        if status in (Status.VOIDED, Status.FAILED):
            self.events.append(Voided(self.merchant_id, self.payment_id, self.order_id))
        elif status is Status.REFUNDED:
            self.events.append(
                Refunded(
                    self.merchant_id, self.payment_id, self.order_id, 0, "", self.currency, self.refunded_minor, True
                )
            )
        elif status is Status.REFUND_FAILED:
            self.events.append(
                RefundFailed(
                    self.merchant_id, self.payment_id, self.order_id, self.failure_code, "refund failed earlier", True
                )
            )

    # -- refunds --------------------------------------------------------------------

    def request_refund(self, amount_minor: int, reason: str, request_id: str = "") -> RefundRequest:
        """A client's refund (RefundPayment): 0 means what is left."""
        self._require(REFUNDABLE, "refund")
        return self._refund(amount_minor, reason, request_id)

    def _refund(self, amount_minor: int, reason: str, request_id: str = "") -> RefundRequest:
        left = self.refundable_minor
        if amount_minor < 0:
            raise DomainError(f"refund amount must not be negative, got {amount_minor}")
        amount = amount_minor or left
        if amount > left or amount == 0:
            raise RefundExceedsBalance(self.payment_id, amount_minor, left)
        self.refund_seq += 1
        # Never the client's request_id: request ids are unique per merchant only, while the gateway's
        # idempotency keys are one namespace (the platform's), so two merchants' ids could meet there.
        # The payment id is unique across merchants and refund_seq within the payment; a retry of the
        # same request is stopped by the request log before it gets here.
        key = f"refund:{self.payment_id}:{self.refund_seq}"
        refund_id = f"re_{self.payment_id}_{self.refund_seq}"
        refund = RefundRequest(self.merchant_id, refund_id, self.payment_id, amount, key, reason, request_id)
        self._move(Status.REFUNDING, "refund_requested", amount, f"{reason} (key {key})")
        self.new_refunds.append(refund)
        return refund

    def refund_succeeded(self, refund: RefundRequest, gateway_refund_id: str) -> None:
        self._require({Status.REFUNDING}, "record a refund")
        refunded = self.refunded_minor + refund.amount_minor
        if refunded > self.amount_minor:
            raise RefundExceedsBalance(self.payment_id, refund.amount_minor, self.refundable_minor)
        self.refunded_minor = refunded
        to = Status.REFUNDED if refunded == self.amount_minor else Status.PARTIALLY_REFUNDED
        self._move(to, "refunded", refund.amount_minor, f"gateway refund {gateway_refund_id}")
        # Once a cancel was asked, the refund that settles the payment is its answer; a client's
        # partial refund that lands first is not.
        answers_cancel = self.cancel_requested and to is Status.REFUNDED
        self.events.append(
            Refunded(
                self.merchant_id, self.payment_id, self.order_id, refund.amount_minor, gateway_refund_id,
                self.currency, refunded, answers_cancel,
            )
        )
        if self.cancel_requested and to is Status.PARTIALLY_REFUNDED:
            self._refund(0, "order cancelled: the rest")

    def refund_refused(self, refund: RefundRequest, code: str, reason: str) -> None:
        self._require({Status.REFUNDING}, "record a refused refund")
        self.failure_code = code
        self._move(Status.REFUND_FAILED, "refund_failed", refund.amount_minor, f"{code}: {reason}")
        self.events.append(
            RefundFailed(self.merchant_id, self.payment_id, self.order_id, code, reason, self.cancel_requested)
        )

    # -- bookkeeping ------------------------------------------------------------------

    def pull_events(self) -> list[DomainEvent]:
        """The saga events recorded since the last pull; the payment keeps none of them."""
        events, self.events = self.events, []
        return events

    def _require(self, allowed: set[Status] | frozenset[Status], action: str) -> None:
        if self.status not in allowed:
            raise InvalidTransition(self.payment_id, self.status, action)

    def _move(self, to: Status, step: str, amount_minor: int, detail: str) -> None:
        self._record(Step(step, self.status, to, amount_minor, detail))
        self.status = to

    def _record(self, step: Step) -> None:
        self.steps.append(step)
        self.changed = True
