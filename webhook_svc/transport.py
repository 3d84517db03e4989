"""One POST of a webhook delivery: what the receiver answered, or why it did not, and how long that took."""

from __future__ import annotations

import contextlib
import math
import ssl
import time
from dataclasses import dataclass
from types import TracebackType

import aiohttp
from yarl import URL

from webhook_svc import ssrf

ANSWER_LIMIT = 64 * 1024


@dataclass(frozen=True)
class AttemptResult:
    http_status: int  # 0: no answer
    error: str  # empty when answered; never holds the request's headers (signatures) or body
    latency_ms: int

    @property
    def delivered(self) -> bool:
        return 200 <= self.http_status < 300

    @property
    def gone(self) -> bool:
        return self.http_status == 410


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and what it wraps: aiohttp puts a resolver's error in `os_error` and `__cause__`."""
    chain: list[BaseException] = []
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop(0)
        if current in chain:
            continue
        chain.append(current)
        if isinstance(current, aiohttp.ClientConnectorError):
            pending.append(current.os_error)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return chain


def failure_text(exc: BaseException, *, host: str, timeout_s: float) -> str | None:
    """A short, human reason for a failed attempt, or None for an exception that is a bug rather than the
    network's doing. Built from the exception's kind, never from its str() where that could carry the URL or
    the request (aiohttp's ClientResponseError names the URL; request_info holds the signed headers)."""
    chain = _causes(exc)
    for cause in chain:
        if isinstance(cause, ssrf.RefusedAddress):
            return f"refused address: {cause}"
    for cause in chain:
        if isinstance(cause, ssrf.UnresolvableHost):
            return f"cannot resolve host {cause.host}"
    if isinstance(exc, TimeoutError):
        # aiohttp's connect and read timeouts are TimeoutError subclasses too, so one message covers them.
        return f"timed out after {float(timeout_s)} s"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"cannot resolve host {host}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate of {host} not accepted: {_tls_reason(exc.certificate_error)}"
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return f"TLS handshake with {host} failed: {_tls_reason(exc.os_error)}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return "connection refused"
        return f"cannot connect to {host}: {_os_reason(exc.os_error)}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection closed before an answer"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"invalid HTTP answer: {exc.message}" if exc.message else "invalid HTTP answer"
    if isinstance(exc, aiohttp.InvalidURL):
        return "invalid URL"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "invalid HTTP answer body"
    if isinstance(exc, OSError):
        return _os_reason(exc)
    if isinstance(exc, aiohttp.ClientError):
        return type(exc).__name__
    if isinstance(exc, ValueError):
        # aiohttp refuses a header value with a newline, or a URL it cannot send, with a bare ValueError.
        return "request refused by the HTTP client: invalid URL or header value"
    return None


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__


def _tls_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return exc.verify_message
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    return type(exc).__name__


def _elapsed_ms(started: float) -> int:
    # Rounded up, so an attempt that took any time at all never reads as 0 ms.
    return math.ceil((time.monotonic() - started) * 1000)


async def _discard_answer(response: aiohttp.ClientResponse) -> None:
    """Reads a bounded answer so the connection can be reused; past the bound aiohttp closes it on release."""
    remaining = ANSWER_LIMIT
    while remaining > 0:
        chunk = await response.content.read(remaining)
        if not chunk:
            return
        remaining -= len(chunk)


class WebhookTransport:
    """One session for every delivery of a process: pooled connections, each one to a checked address."""

    def __init__(self, *, timeout_s: float, allow_private: bool, max_connections: int = 100,
                 limit_per_host: int = 8) -> None:
        self.timeout_s = timeout_s
        self.allow_private = allow_private
        self.max_connections = max_connections
        self.limit_per_host = limit_per_host
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is not None:
            return
        self._session = aiohttp.ClientSession(
            connector=ssrf.connector(allow_private=self.allow_private, limit_per_host=self.limit_per_host,
                                     limit=self.max_connections),
            # total: connect, send and answer together, so a receiver trickling bytes cannot hold a slot longer.
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            # A receiver's cookies must not follow a delivery to another merchant's endpoint.
            cookie_jar=aiohttp.DummyCookieJar(),
            # The answer is read only to be discarded: inflating it would cost memory for nothing.
            auto_decompress=False,
            # A proxy from the environment would connect to an address the guard never saw.
            trust_env=False,
        )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> WebhookTransport:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> AttemptResult:
        """POST once; a network or HTTP problem is returned in the result, never raised."""
        session = self._session
        if session is None:
            raise RuntimeError("WebhookTransport.post before start()")
        started = time.monotonic()
        try:
            host = URL(url).raw_host or ""
        except (ValueError, TypeError):
            return AttemptResult(0, "invalid URL", _elapsed_ms(started))
        try:
            ssrf.check_literal_host(host, allow_private=self.allow_private)
            # A redirect is a failure: following it would reach a host whose address nobody checked.
            async with session.post(url, data=body, headers=headers, allow_redirects=False) as response:
                status = response.status
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    # The receiver has answered; an answer body cut short or too slow does not undo that.
                    await _discard_answer(response)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError,
                ssrf.RefusedAddress, ssrf.UnresolvableHost) as exc:
            error = failure_text(exc, host=host, timeout_s=self.timeout_s)
            if error is None:
                raise
            return AttemptResult(0, error, _elapsed_ms(started))
        return AttemptResult(status, "", _elapsed_ms(started))
