"""A real HTTP webhook receiver for tests: aiohttp on 127.0.0.1, every delivery verified with the
`standardwebhooks` package (an implementation nobody here wrote), answers scripted per request."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import standardwebhooks
from aiohttp import web

from paymesh.webhook.v1 import webhook_service_pb2 as wpb

HANG = -1  # an answer that never comes


@dataclass
class Received:
    """One POST the receiver got."""

    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic()
    verified: bool
    status: int  # what the receiver answered

    @property
    def id(self) -> str:
        return self.headers.get("webhook-id", "")

    @property
    def payload(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


@dataclass
class Receiver:
    """`answer(n, received)` gives the HTTP status of the n-th request (1-based), or HANG."""

    secrets: list[str] = field(default_factory=list)
    answer: Callable[[int, Received], int] = lambda n, r: 200
    received: list[Received] = field(default_factory=list)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    in_flight: int = 0  # requests being answered now
    most_in_flight: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event)  # set by stop(): hanging answers end

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hooks"
        return self.url

    async def stop(self) -> None:
        self.released.set()  # else the server's shutdown waits out its grace for each hanging answer
        await self._runner.cleanup()

    def verifies(self, headers: dict[str, str], body: bytes) -> bool:
        for secret in self.secrets:
            try:
                standardwebhooks.Webhook(secret).verify(body, headers)
                return True
            except standardwebhooks.WebhookVerificationError:
                continue
        return False

    async def _handle(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        got = Received(headers, body, time.monotonic(), self.verifies(headers, body), 0)
        got.status = self.answer(len(self.received) + 1, got)
        async with self.arrived:
            self.received.append(got)
            self.arrived.notify_all()
        if got.status == HANG:
            await self.released.wait()  # the sender gives up first (its timeout); this ends with the server
            return web.Response(status=503)
        return web.Response(status=got.status)

    async def wait_for(self, accept: Callable[[list[Received]], bool], timeout: float, what: str) -> list[Received]:
        async with self.arrived:
            try:
                await asyncio.wait_for(self.arrived.wait_for(lambda: accept(self.received)), timeout)
            except TimeoutError:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; received "
                                     f"{[(r.id, r.status) for r in self.received]}") from None
        return list(self.received)

    def delivered(self) -> dict[str, Received]:
        """The deliveries answered 2xx, by webhook-id (the receiver's dedupe)."""
        return {r.id: r for r in self.received if 200 <= r.status < 300}


async def register(
    stub: Any, receiver: Receiver, events: list[str], description: str = ""
) -> wpb.CreateEndpointResponse:
    """An endpoint for `receiver`, whose secret it then verifies with."""
    reply: wpb.CreateEndpointResponse = await stub.CreateEndpoint(
        wpb.CreateEndpointRequest(request_id=str(uuid.uuid4()), url=receiver.url, enabled_events=events,
                                  description=description), timeout=10)
    receiver.secrets.append(reply.secret)
    return reply


async def delete(stub: Any, endpoint_id: str) -> None:
    await stub.DeleteEndpoint(wpb.DeleteEndpointRequest(request_id=str(uuid.uuid4()), endpoint_id=endpoint_id),
                              timeout=10)
