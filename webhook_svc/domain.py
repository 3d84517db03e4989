"""webhook_svc's domain: endpoints, the events merchants are told about, and the retry schedule of a delivery."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

# The merchant event types (DESIGN.md, Webhooks), and the wildcard an endpoint may subscribe with.
EVENT_TYPES: tuple[str, ...] = (
    "order.confirmed",
    "order.rejected",
    "order.payment_failed",
    "order.cancelled",
    "order.requires_review",
    "payment.refunded",
    "payment.refund_failed",
)
EVERY_TYPE = "*"

# Seconds before each attempt: the first at once, then after each failure the next entry; a delivery failing
# the last is FAILED (about three days in all, as Standard Webhooks and Stripe retry).
DEFAULT_SCHEDULE_S: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
# A share of each delay drawn at random either way, so endpoints that failed together do not retry together.
JITTER = 0.1
# An endpoint whose every attempt failed for this long is disabled (FAILING).
DEFAULT_DISABLE_AFTER = timedelta(days=5)
DEFAULT_GRACE = timedelta(hours=24)
# How long the event feed (ListEvents, ResendEvent) keeps an event once none of its deliveries is pending.
DEFAULT_RETENTION = timedelta(days=30)
MAX_GRACE = timedelta(days=7)


class DomainError(Exception):
    """A refusal of the webhook domain; the API maps each kind to a status in one place."""


class UnknownEventType(DomainError):
    def __init__(self, types: list[str]) -> None:
        super().__init__(f"unknown event type {', '.join(types)}: use {', '.join(EVENT_TYPES)} or {EVERY_TYPE}")
        self.types = types


class DisabledReason(StrEnum):
    MERCHANT = "MERCHANT"  # UpdateEndpoint(disabled=true)
    GONE = "GONE"  # the URL answered 410
    FAILING = "FAILING"  # every attempt failed for DISABLE_AFTER


class DeliveryStatus(StrEnum):
    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


class FailureReason(StrEnum):
    ATTEMPTS_EXHAUSTED = "ATTEMPTS_EXHAUSTED"
    ENDPOINT_GONE = "ENDPOINT_GONE"
    ENDPOINT_DISABLED = "ENDPOINT_DISABLED"
    ENDPOINT_DELETED = "ENDPOINT_DELETED"


def new_endpoint_id() -> str:
    return f"we_{uuid.uuid4().hex}"


def new_event_id() -> str:
    return f"evt_{uuid.uuid4().hex}"


def new_delivery_id() -> str:
    return f"dlv_{uuid.uuid4().hex}"


def event_types(values: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The subscription an endpoint keeps: sorted, once each, `*` alone when named; UnknownEventType otherwise."""
    unknown = sorted({v for v in values if v not in EVENT_TYPES and v != EVERY_TYPE})
    if unknown:
        raise UnknownEventType(unknown)
    if EVERY_TYPE in values:
        return (EVERY_TYPE,)
    return tuple(sorted(set(values)))


@dataclass
class Endpoint:
    """A merchant's URL and what is sent to it; the secrets sign every delivery."""

    endpoint_id: str
    merchant_id: str
    url: str
    enabled_events: tuple[str, ...]
    description: str
    secret: str = field(repr=False)
    create_time: datetime
    update_time: datetime
    previous_secret: str = field(default="", repr=False)
    previous_secret_expire_time: datetime | None = None
    disabled_reason: DisabledReason | None = None
    failing_since: datetime | None = None

    @property
    def disabled(self) -> bool:
        return self.disabled_reason is not None

    def subscribed(self, event_type: str) -> bool:
        return not self.disabled and (EVERY_TYPE in self.enabled_events or event_type in self.enabled_events)

    def signing_secrets(self, now: datetime) -> list[str]:
        """The secrets that sign a delivery made at `now`: the previous one too while its grace lasts."""
        expire = self.previous_secret_expire_time
        if self.previous_secret and expire is not None and now < expire:
            return [self.secret, self.previous_secret]
        return [self.secret]

    def roll(self, new_secret: str, grace: timedelta, now: datetime) -> None:
        """A new secret; the current one signs beside it for `grace` (none when zero)."""
        if grace > timedelta(0):
            self.previous_secret, self.previous_secret_expire_time = self.secret, now + grace
        else:
            self.previous_secret, self.previous_secret_expire_time = "", None
        self.secret = new_secret
        self.update_time = now

    def disable(self, reason: DisabledReason, now: datetime) -> None:
        self.disabled_reason = reason
        self.update_time = now

    def enable(self, now: datetime) -> None:
        self.disabled_reason = None
        self.failing_since = None
        self.update_time = now

    def answered(self, delivered: bool, gone: bool, now: datetime, disable_after: timedelta) -> bool:
        """What one attempt's answer does to the endpoint; True when it disabled it (gone, or failing too long)."""
        if delivered:
            self.failing_since = None
            return False
        if self.disabled:
            return False
        if gone:
            self.disable(DisabledReason.GONE, now)
            return True
        if self.failing_since is None:
            self.failing_since = now
        elif now - self.failing_since >= disable_after:
            self.disable(DisabledReason.FAILING, now)
            return True
        return False


@dataclass(frozen=True)
class MerchantEvent:
    """Something a merchant is told about: its body is what every delivery of it POSTs, byte for byte."""

    event_id: str
    merchant_id: str
    type: str
    order_id: str
    sequence: int
    create_time: datetime
    body: str
    source_event_id: str  # the saga event it came from


@dataclass(frozen=True)
class Attempt:
    """One POST of a delivery (or one that could not be made: http_status 0 and the error)."""

    attempt: int
    attempt_time: datetime
    http_status: int
    error: str
    latency_ms: int

    @property
    def delivered(self) -> bool:
        return 200 <= self.http_status < 300

    @property
    def gone(self) -> bool:
        return self.http_status == 410


@dataclass
class Delivery:
    """One event to one endpoint, tried on the schedule until a 2xx, a 410 or the schedule's end."""

    delivery_id: str
    event_id: str
    endpoint_id: str
    merchant_id: str
    create_time: datetime
    status: DeliveryStatus = DeliveryStatus.PENDING
    attempts: int = 0
    next_attempt_time: datetime | None = None
    failure_reason: FailureReason | None = None

    @classmethod
    def new(cls, event_id: str, endpoint_id: str, merchant_id: str, now: datetime,
            schedule: tuple[float, ...] = DEFAULT_SCHEDULE_S) -> Delivery:
        """A pending delivery whose first attempt is the schedule's first entry from now (at once by default)."""
        return cls(new_delivery_id(), event_id, endpoint_id, merchant_id, now,
                   next_attempt_time=now + timedelta(seconds=schedule[0]))

    def answered(self, attempt: Attempt, schedule: tuple[float, ...], draw: float) -> None:
        """The attempt's outcome: delivered, gone, or the next attempt after the schedule's delay (jittered by
        `draw`, uniform in [0, 1)), or FAILED at the schedule's end."""
        self.attempts = attempt.attempt
        if attempt.delivered:
            self._end(DeliveryStatus.SUCCEEDED, None)
        elif attempt.gone:
            self._end(DeliveryStatus.FAILED, FailureReason.ENDPOINT_GONE)
        elif self.attempts >= len(schedule):
            self._end(DeliveryStatus.FAILED, FailureReason.ATTEMPTS_EXHAUSTED)
        else:
            self.next_attempt_time = attempt.attempt_time + timedelta(seconds=jittered(schedule[self.attempts], draw))

    def stop(self, reason: FailureReason) -> None:
        """The endpoint went away (disabled or deleted): a pending delivery fails; ResendEvent can make a new one."""
        if self.status is DeliveryStatus.PENDING:
            self._end(DeliveryStatus.FAILED, reason)

    def _end(self, status: DeliveryStatus, reason: FailureReason | None) -> None:
        self.status = status
        self.failure_reason = reason
        self.next_attempt_time = None


def jittered(delay_s: float, draw: float) -> float:
    """`delay_s` moved by up to JITTER of itself either way; `draw` uniform in [0, 1)."""
    return delay_s * (1 - JITTER + 2 * JITTER * draw)


def parse_schedule(text: str) -> tuple[float, ...]:
    """PAYMESH_WEBHOOK_RETRY_SCHEDULE: comma-separated seconds before each attempt ("0,5,300"); ValueError
    naming the problem otherwise."""
    try:
        delays = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"must be comma-separated seconds such as 0,5,300, got {text!r}") from None
    if not delays or any(d < 0 or not math.isfinite(d) for d in delays):
        raise ValueError(f"must be one or more non-negative seconds, got {text!r}")
    return delays
