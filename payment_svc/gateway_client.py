"""The client of the payment gateway: the platform's key on every call, deadlines, in-process retries of
transient codes, a circuit breaker, and answers reduced to what the saga needs to know."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import pybreaker
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from paymesh.chassis import tracing
from paymesh.chassis.auth.bearer import key_metadata
from paymesh.chassis.auth.keys import ApiKey
from paymesh.chassis.backoff import Backoff
from paymesh.chassis.events import TRACEPARENT
from paymesh.chassis.tls import ClientTls, channel
from paymesh.gateway.v1 import gateway_pb2, gateway_service_pb2, gateway_service_pb2_grpc

if TYPE_CHECKING:
    from paymesh.chassis.observability import Telemetry

log = logging.getLogger(__name__)

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)

RETRYABLE_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})
# Refused before anything happened: the call certainly did not charge.
UNREACHED_CODES = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED"})
# The gateway answered and refused this request: final, nothing happened, never retried.
REFUSED_CODES = frozenset(
    {
        "INVALID_ARGUMENT",
        "FAILED_PRECONDITION",
        "ALREADY_EXISTS",
        "NOT_FOUND",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
    }
)
# The gateway refused payment_svc itself (the platform key is wrong, expired, revoked or lacks a scope):
# nothing happened, as for a refusal, but it says nothing of the payment. Not a decline (a FAILED payment
# for our own misconfiguration), and not retried in-process (a key is not fixed in milliseconds): the call
# is unanswered and never reached its work, so the payment waits and is asked again with backoff, as when
# the gateway is down, until an operator fixes the key.
AUTH_CODES = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED"})


def is_retryable(code: str) -> bool:
    return code in RETRYABLE_CODES


def is_refusal(code: str) -> bool:
    return code in REFUSED_CODES


def is_auth_failure(code: str) -> bool:
    return code in AUTH_CODES


def may_have_reached(code: str) -> bool:
    """Whether a call that failed with `code` (a gRPC status code's name) may have done its work (e.g. charged)."""
    return code not in UNREACHED_CODES and code not in REFUSED_CODES and code not in AUTH_CODES


@dataclass(frozen=True)
class RetryPolicy:
    """How often one gateway call is tried in-process, and the chassis Backoff between the tries."""

    attempts: int = 3
    backoff: Backoff = Backoff(base_s=0.1, cap_s=0.4)

    def worst_case_s(self) -> float:
        """The most time spent waiting between the attempts of one call."""
        return sum(self.backoff.ceiling(n) for n in range(1, self.attempts))


class Kind(StrEnum):
    APPROVED = "approved"  # charged / refunded
    DECLINED = "declined"  # the gateway said no, for good: nothing moved
    UNKNOWN = "unknown"  # no answer, and some attempt may have done the work
    UNAVAILABLE = "unavailable"  # no answer, and no attempt reached the gateway


@dataclass(frozen=True)
class Outcome:
    kind: Kind
    id: str = ""  # charge_id or refund_id when APPROVED
    code: str = ""  # decline or refusal code when DECLINED
    detail: str = ""

    @property
    def resolved(self) -> bool:
        return self.kind in (Kind.APPROVED, Kind.DECLINED)

    @property
    def may_have_reached(self) -> bool:
        return self.kind is Kind.UNKNOWN


@dataclass(frozen=True)
class GatewayPolicy:
    call_deadline_s: float = 2.0
    retry: RetryPolicy = RetryPolicy()  # 3 tries, under 1 s of waiting in all
    breaker_fail_max: int = 5
    breaker_reset_s: float = 5.0


class GatewayClient:
    """Charge and Refund through one channel and one circuit breaker, as the platform (its own key, not a
    merchant's): each charge names the merchant it is made for."""

    def __init__(self, addr: str, policy: GatewayPolicy, api_key: ApiKey, tls: ClientTls | None = None,
                 *, telemetry: Telemetry | None = None) -> None:
        self.addr = addr
        # Each call is a client span (its traceparent sent as metadata) and is timed by outcome.
        self.telemetry = telemetry
        # PAYMESH_TLS_CA and payment_svc's own certificate (its client certificate under mTLS); None: plaintext.
        self.tls = tls
        self.policy = policy
        # Sent with each call (cheaper than a channel interceptor, which puts every call on grpc's slower path).
        self._metadata = key_metadata(api_key)
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=policy.breaker_fail_max,
            reset_timeout=policy.breaker_reset_s,
            throw_new_error_on_trip=False,  # keep the real code: it says whether the call may have charged
            name="gateway",
            listeners=[_BreakerState(telemetry)] if telemetry is not None else [],
        )
        if telemetry is not None:
            telemetry.metrics.breaker_state("gateway", self.breaker.current_state)
        self._probing = False
        self._channel: grpc.aio.Channel | None = None
        self._stub: gateway_service_pb2_grpc.GatewayServiceAsyncStub | None = None

    async def start(self) -> None:
        # A gateway back from an outage is seen within a second, not after gRPC's 120 s backoff.
        self._channel = channel(
            self.addr,
            self.tls,
            options=[
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ],
        )
        self._stub = gateway_service_pb2_grpc.GatewayServiceStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)

    async def charge(
        self, key: str, amount_minor: int, currency: str, token: str, order_id: str, *, merchant_id: str
    ) -> Outcome:
        assert self._stub is not None, "GatewayClient.start() opens the channel first"
        request = gateway_service_pb2.ChargeRequest(
            idempotency_key=key,
            amount_minor=amount_minor,
            currency=currency,
            payment_method_token=token,
            order_id=order_id,
            description=f"order {order_id}",
            merchant_id=merchant_id,
        )
        with self._observed("Charge") as done:
            reply = await self._call(self._stub.Charge, request)
            if isinstance(reply, Outcome):
                return done(reply)
            charge = reply.charge
            if charge.status == gateway_pb2.CHARGE_STATUS_DECLINED:
                code = charge.decline_code or "card_declined"
                return done(Outcome(Kind.DECLINED, charge.charge_id, code, f"declined by the gateway: {code}"))
            return done(Outcome(Kind.APPROVED, charge.charge_id, detail=f"charge {charge.charge_id}"))

    async def refund(self, key: str, charge_id: str, amount_minor: int, reason: str) -> Outcome:
        """The refund of one of our charges; the gateway tags it with that charge's merchant (RefundRequest
        has no merchant of its own)."""
        assert self._stub is not None, "GatewayClient.start() opens the channel first"
        request = gateway_service_pb2.RefundRequest(
            idempotency_key=key, charge_id=charge_id, amount_minor=amount_minor, reason=reason
        )
        with self._observed("Refund") as done:
            reply = await self._call(self._stub.Refund, request)
            if isinstance(reply, Outcome):
                return done(reply)
            return done(Outcome(Kind.APPROVED, reply.refund.refund_id, detail=f"refund {reply.refund.refund_id}"))

    @contextlib.contextmanager
    def _observed(self, operation: str) -> Iterator[Callable[[Outcome], Outcome]]:
        """A client span for one call (with its retries) under the current span, whose traceparent the
        attempts send; the call's time observed by its outcome."""
        if self.telemetry is None:
            yield lambda outcome: outcome
            return
        telemetry, started = self.telemetry, time.perf_counter()
        span = telemetry.tracing.start(f"paymesh.gateway.v1.GatewayService/{operation}", tracing.CLIENT, None,
                                       {"rpc.system": "grpc", "rpc.service": "paymesh.gateway.v1.GatewayService",
                                        "rpc.method": operation, "server.address": self.addr})
        kind = "error"

        def done(outcome: Outcome) -> Outcome:
            nonlocal kind
            kind = outcome.kind.value
            return outcome

        token = tracing.enter(span.traceparent)
        try:
            yield done
        finally:
            tracing.leave(token)
            telemetry.metrics.gateway_seconds.labels(operation, kind).observe(time.perf_counter() - started)
            span.set("paymesh.outcome", kind)
            if kind not in (Kind.APPROVED, Kind.DECLINED):
                span.fail(kind)
            span.end()

    async def _call(self, method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp], request: Req) -> Resp | Outcome:
        """The reply, or an Outcome: DECLINED for a final refusal, UNKNOWN / UNAVAILABLE when unanswered.

        The breaker counts calls, not attempts: a call fails only when its in-process retries
        are spent unanswered. A gateway that drops some requests then keeps its circuit
        closed; one that is down fails every call fast and opens it after `fail_max` calls.
        """
        probe = self.breaker.current_state != pybreaker.STATE_CLOSED
        if probe and self._probing:
            return Outcome(Kind.UNAVAILABLE, detail="circuit half-open, its probe is in flight")
        try:
            with self.breaker.calling():
                if probe:
                    self._probing = True
                result = await self._attempts(method, request)
                if isinstance(result, Outcome) and not result.resolved:
                    raise _Unanswered(result)
                return result
        except _Unanswered as unanswered:
            return unanswered.outcome
        except pybreaker.CircuitBreakerError:
            return Outcome(Kind.UNAVAILABLE, detail="circuit open: the gateway failed repeatedly")
        finally:
            if probe:
                self._probing = False

    async def _attempts(self, method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp], request: Req) -> Resp | Outcome:
        """Up to `retry.attempts` tries, retrying transient codes only, with jittered backoff."""
        retry = self.policy.retry
        reached = False
        last = ""
        for attempt in range(1, retry.attempts + 1):
            try:
                return await method(request, timeout=self.policy.call_deadline_s, metadata=self._call_metadata())
            except grpc.aio.AioRpcError as err:
                code = err.code().name
                if is_refusal(code):  # the gateway is up and said no, for good
                    return Outcome(Kind.DECLINED, code=_refusal_code(err), detail=f"refused: {err.details()}")
                if is_auth_failure(code):
                    # An operator's problem, and the same for every call: said loudly, never in-process retried.
                    log.error(
                        "the gateway at %s refused payment_svc's platform key (%s %s): check "
                        "PAYMENT_SVC_GATEWAY_API_KEY against the key the gateway accepts; payments wait and are "
                        "asked again later",
                        self.addr, code, _refusal_code(err),
                    )
                    # An earlier attempt of this sequence that may have charged still may have.
                    kind = Kind.UNKNOWN if reached else Kind.UNAVAILABLE
                    return Outcome(kind, detail=f"attempt {attempt}: platform key refused: {code} {err.details()}")
                reached = reached or may_have_reached(code)
                last = f"attempt {attempt}: {code} {err.details()}"
                if not is_retryable(code):
                    break  # e.g. INTERNAL: not worth retrying here, yet it may have charged
                if attempt < retry.attempts:
                    await asyncio.sleep(retry.backoff.delay(attempt))  # backoff between attempts
        return Outcome(Kind.UNKNOWN if reached else Kind.UNAVAILABLE, detail=last)


    def _call_metadata(self) -> tuple[tuple[str, str], ...]:
        """The platform key, and the current span's traceparent (the gateway's server span is its child)."""
        traceparent = tracing.current_traceparent()
        return self._metadata if traceparent is None else (*self._metadata, (TRACEPARENT, traceparent))


class _BreakerState(pybreaker.CircuitBreakerListener):
    """Keeps paymesh_breaker_state{breaker="gateway"} at the breaker's state."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        self.telemetry.metrics.breaker_state(cb.name, new_state.name)


class _Unanswered(Exception):
    """Carries an unanswered call's Outcome through the breaker, which counts it as a failure."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.detail)
        self.outcome = outcome


def _refusal_code(err: grpc.aio.AioRpcError) -> str:
    """The gateway's ErrorInfo reason in lower case (e.g. refund_declined), else the status code's name."""
    # grpc-stubs does not make AioRpcError a grpc.Call; it has the code/details/trailing_metadata from_call reads.
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    if status is not None:
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Is(info.DESCRIPTOR) and detail.Unpack(info) and info.reason:
                return str(info.reason).lower()
    return err.code().name.lower()
