"""A real gRPC GatewayService on a free port with scripted answers: a peer over the wire for fault cases.
As the bank does, it serves the platform alone: a call without `authorization: Bearer <accepted_key>` is
refused UNAUTHENTICATED before anything happens."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import grpc

from paymesh.chassis.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ServiceError,
    Unauthenticated,
    to_status,
)
from paymesh.gateway.v1 import gateway_pb2, gateway_service_pb2, gateway_service_pb2_grpc
from paymesh.ops.natsserver import free_port
from tests.keys import PLATFORM_KEY

Context = grpc.aio.ServicerContext[Any, Any]

TOKENS = {
    "tok_visa",
    "tok_chargeDeclined",
    "tok_chargeDeclinedInsufficientFunds",
    "tok_flaky",
    "tok_lostResponse",
    "tok_refundFails",
    "tok_slow",  # waits for `release` before answering (and stores the charge only then)
    "tok_blackhole",  # stores the charge, then answers DEADLINE_EXCEEDED while `blackhole` is set
}


class ScriptedGateway(gateway_service_pb2_grpc.GatewayServiceServicer):
    def __init__(self, accepted_key: str = PLATFORM_KEY) -> None:
        self.accepted_key = accepted_key  # a test may change it: the bank's side of a key fix
        # How a wrong key is refused: UNAUTHENTICATED (unknown key) or PERMISSION_DENIED (a key without the scope).
        self.refuse_with = grpc.StatusCode.UNAUTHENTICATED
        self.auth_refusals = 0
        self.charges: dict[str, gateway_pb2.Charge] = {}  # by idempotency key
        self.refunds: dict[str, gateway_service_pb2.RefundResponse] = {}  # by idempotency key
        self.charge_calls: Counter[str] = Counter()
        self.refund_calls: Counter[str] = Counter()
        self.release = asyncio.Event()
        self.slow_arrived = asyncio.Event()
        self.blackhole = True
        self.token_of: dict[str, str] = {}

    async def Charge(  # noqa: N802
        self, request: gateway_service_pb2.ChargeRequest, context: Context
    ) -> gateway_service_pb2.ChargeResponse:
        await self._authenticate(context)
        key = request.idempotency_key
        self.charge_calls[key] += 1
        token = request.payment_method_token
        if not request.merchant_id:
            await context.abort_with_status(
                to_status(InvalidArgument("merchant_id is required: the platform tags each charge",
                                          reason="MERCHANT_ID_MISSING"))
            )
        self.token_of[key] = token
        if token not in TOKENS:
            await context.abort_with_status(
                to_status(InvalidArgument(f"unknown token {token}", reason="UNKNOWN_TOKEN"))
            )
        if token == "tok_flaky" and self.charge_calls[key] <= 2:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "flaky: try again")
        if token == "tok_slow":
            self.slow_arrived.set()
            await self.release.wait()
        if key not in self.charges:
            status, code = gateway_pb2.CHARGE_STATUS_SUCCEEDED, ""
            if token == "tok_chargeDeclined":
                status, code = gateway_pb2.CHARGE_STATUS_DECLINED, "card_declined"
            elif token == "tok_chargeDeclinedInsufficientFunds":
                status, code = gateway_pb2.CHARGE_STATUS_DECLINED, "insufficient_funds"
            self.charges[key] = gateway_pb2.Charge(
                charge_id=f"ch_{uuid.uuid4().hex}",
                idempotency_key=key,
                amount_minor=request.amount_minor,
                currency=request.currency,
                status=status,
                decline_code=code,
                order_id=request.order_id,
                card_last4="4242",
                merchant_id=request.merchant_id,
            )
            if token == "tok_lostResponse":
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "response lost")
        if token == "tok_blackhole" and self.blackhole:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "response lost")
        return gateway_service_pb2.ChargeResponse(charge=self.charges[key])

    def charge_by_id(self, charge_id: str) -> gateway_pb2.Charge | None:
        return next((c for c in self.charges.values() if c.charge_id == charge_id), None)

    async def Refund(  # noqa: N802
        self, request: gateway_service_pb2.RefundRequest, context: Context
    ) -> gateway_service_pb2.RefundResponse:
        await self._authenticate(context)
        key = request.idempotency_key
        self.refund_calls[key] += 1
        if key in self.refunds:
            return self.refunds[key]
        charge = self.charge_by_id(request.charge_id)
        if charge is None:
            await context.abort_with_status(to_status(NotFound("no such charge", reason="CHARGE_NOT_FOUND")))
        assert charge is not None
        if self.token_of.get(charge.idempotency_key) == "tok_refundFails":
            await context.abort_with_status(
                to_status(FailedPrecondition("refund declined by the issuer", reason="REFUND_DECLINED"))
            )
        left = charge.amount_minor - charge.refunded_minor
        amount = request.amount_minor or left
        if amount > left:
            await context.abort_with_status(
                to_status(InvalidArgument("above what is left", reason="REFUND_EXCEEDS_BALANCE"))
            )
        charge.refunded_minor += amount
        charge.status = (
            gateway_pb2.CHARGE_STATUS_REFUNDED
            if charge.refunded_minor == charge.amount_minor
            else gateway_pb2.CHARGE_STATUS_PARTIALLY_REFUNDED
        )
        refund = gateway_pb2.Refund(
            refund_id=f"re_{uuid.uuid4().hex}", charge_id=charge.charge_id, idempotency_key=key, amount_minor=amount,
            merchant_id=charge.merchant_id,
        )
        self.refunds[key] = gateway_service_pb2.RefundResponse(refund=refund, charge=charge)
        return self.refunds[key]

    async def _authenticate(self, context: Context) -> None:
        metadata = dict(context.invocation_metadata() or ())
        if metadata.get("authorization") != f"Bearer {self.accepted_key}":
            self.auth_refusals += 1
            if self.refuse_with == grpc.StatusCode.PERMISSION_DENIED:
                error: ServiceError = PermissionDenied("this key may not charge", reason="SCOPE_MISSING")
            else:
                error = Unauthenticated("the platform key is not the one this gateway accepts",
                                        reason="API_KEY_INVALID")
            await context.abort_with_status(to_status(error))

    def refunded_total(self, key: str) -> int:
        charge = self.charges.get(key)
        return 0 if charge is None else charge.refunded_minor


class GatewayServer:
    """Starts, stops and restarts the scripted gateway on one port, keeping its state."""

    def __init__(self, accepted_key: str = PLATFORM_KEY) -> None:
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.servicer = ScriptedGateway(accepted_key)
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        server = grpc.aio.server()
        gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server(self.servicer, server)
        assert server.add_insecure_port(self.addr) == self.port
        await server.start()
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
            self._server = None
