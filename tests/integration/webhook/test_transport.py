"""One delivery POST against real aiohttp receivers on 127.0.0.1: answers, failures, redirects and the SSRF guard."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiohttp.client_reqrep import ConnectionKey
from standardwebhooks import Webhook

from webhook_svc import signing, ssrf
from webhook_svc.transport import AttemptResult, WebhookTransport, failure_text

pytestmark = pytest.mark.timeout(10)

BODY = json.dumps({"id": "evt_t1", "type": "order.confirmed", "data": {"object": {"order_id": "ord_1"}}}).encode()


@dataclass
class Receiver:
    port: int
    secret: str
    hits: Counter[str] = field(default_factory=Counter)
    verified: list[object] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rx = Receiver(port=0, secret=signing.new_secret())

    async def answer(request: web.Request) -> web.StreamResponse:
        path = request.path
        rx.hits[path] += 1
        body = await request.read()
        if path == "/verify":
            rx.verified.append(Webhook(rx.secret).verify(body, dict(request.headers)))
            return web.Response(status=200, text="ok")
        if path == "/error":
            return web.Response(status=500, text="boom")
        if path == "/gone":
            return web.Response(status=410)
        if path == "/hang":
            await rx.release.wait()
            return web.Response(status=200)
        if path == "/redirect":
            raise web.HTTPFound(location="/target")
        if path == "/big":
            return web.Response(status=200, body=b"x" * (1024 * 1024))
        if path == "/trickle":
            response = web.StreamResponse(status=202)
            await response.prepare(request)
            await response.write(b"partial")
            await rx.release.wait()
            return response
        return web.Response(status=200, text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rx.port = runner.addresses[0][1]
    try:
        yield rx
    finally:
        rx.release.set()
        await runner.cleanup()


@pytest.fixture
async def transport() -> AsyncIterator[WebhookTransport]:
    async with WebhookTransport(timeout_s=0.5, allow_private=True) as t:
        yield t


@pytest.fixture
async def guarded() -> AsyncIterator[WebhookTransport]:
    async with WebhookTransport(timeout_s=0.5, allow_private=False) as t:
        yield t


def _signed(secret: str, event_id: str = "evt_t1") -> dict[str, str]:
    return signing.headers([secret], event_id, int(time.time()), BODY)


async def test_a_2xx_is_delivered_and_the_signature_survives_the_trip(
        receiver: Receiver, transport: WebhookTransport) -> None:
    result = await transport.post(receiver.url("/verify"), _signed(receiver.secret), BODY)
    assert result == AttemptResult(200, "", result.latency_ms)
    assert result.delivered and not result.gone and result.latency_ms > 0
    assert receiver.verified == [json.loads(BODY)]


async def test_a_500_is_an_answer_but_not_a_delivery(receiver: Receiver, transport: WebhookTransport) -> None:
    result = await transport.post(receiver.url("/error"), _signed(receiver.secret), BODY)
    assert (result.http_status, result.error, result.delivered) == (500, "", False)


async def test_a_410_is_gone(receiver: Receiver, transport: WebhookTransport) -> None:
    result = await transport.post(receiver.url("/gone"), _signed(receiver.secret), BODY)
    assert result.gone and not result.delivered and result.http_status == 410


async def test_a_receiver_that_never_answers_times_out_within_the_bound(
        receiver: Receiver, transport: WebhookTransport) -> None:
    headers = _signed(receiver.secret)
    started = time.monotonic()
    result = await transport.post(receiver.url("/hang"), headers, BODY)
    elapsed = time.monotonic() - started
    assert result.http_status == 0 and result.error == "timed out after 0.5 s"
    assert 0.45 <= elapsed < 2.0 and result.latency_ms >= 450
    assert receiver.hits["/hang"] == 1
    assert headers["webhook-signature"] not in result.error and BODY.decode() not in result.error


async def test_a_closed_port_is_connection_refused(transport: WebhookTransport) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = await transport.post(f"http://127.0.0.1:{port}/", {}, BODY)
    assert (result.http_status, result.error) == (0, "connection refused")


async def test_a_redirect_is_not_followed(receiver: Receiver, transport: WebhookTransport) -> None:
    result = await transport.post(receiver.url("/redirect"), _signed(receiver.secret), BODY)
    assert result.http_status == 302 and not result.delivered and result.error == ""
    assert receiver.hits["/redirect"] == 1 and receiver.hits["/target"] == 0


async def test_a_large_answer_is_read_only_up_to_the_bound(receiver: Receiver, transport: WebhookTransport) -> None:
    result = await transport.post(receiver.url("/big"), _signed(receiver.secret), BODY)
    assert result.delivered and result.error == ""
    again = await transport.post(receiver.url("/ok"), _signed(receiver.secret), BODY)
    assert again.delivered


async def test_an_answer_whose_body_stalls_still_counts_its_status(
        receiver: Receiver, transport: WebhookTransport) -> None:
    result = await transport.post(receiver.url("/trickle"), _signed(receiver.secret), BODY)
    assert (result.http_status, result.error) == (202, "") and result.delivered


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_loopback_is_refused_before_any_request(
        receiver: Receiver, guarded: WebhookTransport, host: str) -> None:
    result = await guarded.post(receiver.url("/ok", host=host), _signed(receiver.secret), BODY)
    assert result.http_status == 0
    assert result.error.startswith(f"refused address: webhook URL host {host} ")
    assert "a loopback address" in result.error and "PAYMESH_WEBHOOK_ALLOW_PRIVATE=true" in result.error
    assert sum(receiver.hits.values()) == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_allow_private_reaches_a_local_receiver(
        receiver: Receiver, transport: WebhookTransport, host: str) -> None:
    result = await transport.post(receiver.url("/ok", host=host), _signed(receiver.secret), BODY)
    assert result.delivered
    assert receiver.hits["/ok"] == 1


async def test_an_unresolvable_host_is_its_own_error(guarded: WebhookTransport) -> None:
    result = await guarded.post("https://no-such-host.invalid/hook", {}, BODY)
    assert (result.http_status, result.error) == (0, "cannot resolve host no-such-host.invalid")


async def test_what_the_http_client_refuses_is_returned_not_raised(
        receiver: Receiver, transport: WebhookTransport) -> None:
    result = await transport.post(receiver.url("/ok"), {"x-bad": "one\r\ntwo"}, BODY)
    assert (result.http_status, result.error) == (0, "request refused by the HTTP client: invalid URL or header value")
    assert (await transport.post("http://[::1/", {}, BODY)).error == "invalid URL"
    assert sum(receiver.hits.values()) == 0


async def test_post_before_start_is_a_programming_error() -> None:
    with pytest.raises(RuntimeError, match="before start"):
        await WebhookTransport(timeout_s=1.0, allow_private=True).post("http://127.0.0.1:1/", {}, b"")


def _key(host: str) -> ConnectionKey:
    return ConnectionKey(host, 443, True, True, None, None, None)


def test_a_refusal_wrapped_by_aiohttp_is_unwrapped() -> None:
    refused = ssrf.RefusedAddress("hooks.example", "10.0.0.5", "private")
    by_cause = aiohttp.ClientConnectorDNSError(_key("hooks.example"), OSError("lookup failed"))
    by_cause.__cause__ = refused
    for wrapped in (by_cause, aiohttp.ClientConnectionError("connector failed")):
        wrapped.__cause__ = refused
        text = failure_text(wrapped, host="hooks.example", timeout_s=10.0)
        assert text == f"refused address: {refused}"
        assert "resolves to 10.0.0.5, a private address" in (text or "")


def test_wrapped_dns_and_connect_failures_read_as_such() -> None:
    dns = aiohttp.ClientConnectorDNSError(_key("hooks.example"), socket.gaierror(-2, "Name or service not known"))
    assert failure_text(dns, host="hooks.example", timeout_s=10.0) == "cannot resolve host hooks.example"
    unresolvable = aiohttp.ClientConnectorDNSError(_key("hooks.example"), OSError("lookup failed"))
    unresolvable.__cause__ = ssrf.UnresolvableHost("hooks.example", "no address")
    assert failure_text(unresolvable, host="hooks.example", timeout_s=10.0) == "cannot resolve host hooks.example"
    refused = aiohttp.ClientConnectorError(_key("hooks.example"), ConnectionRefusedError(111, "refused"))
    assert failure_text(refused, host="hooks.example", timeout_s=10.0) == "connection refused"
    assert failure_text(aiohttp.ServerTimeoutError(), host="h", timeout_s=10.0) == "timed out after 10.0 s"
    assert failure_text(KeyError("a bug"), host="h", timeout_s=10.0) is None
