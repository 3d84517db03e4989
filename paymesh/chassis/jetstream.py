"""JetStream plumbing: connecting, ensuring streams, and atomic batch publishing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from paymesh.chassis.backoff import Backoff
from paymesh.chassis.events import OutboundEvent
from paymesh.chassis.nats_creds import NatsCredentials

T = TypeVar("T")

log = logging.getLogger(__name__)

DLQ_STREAM = "DLQ"
DLQ_SUBJECTS = ["dlq.>"]
# Server-side dedupe of Nats-Msg-Id; the inbox dedupes beyond this window.
DUPLICATE_WINDOW_S = 120.0
MAX_ATOMIC_BATCH = 1000  # nats-server's limit on one atomic batch
API_RETRY_S = 30.0  # how long ask_until_answered asks a JetStream API that times out
# How long a service waits at start for a stream another owns (a peer's, the DLQ) to exist.
BIND_WAIT_S = 60.0
# Between attempts to reach a NATS server that is not up yet, or a JetStream API that timed out.
RETRY = Backoff(base_s=0.1, cap_s=2.0)


class StreamMissing(RuntimeError):
    """A stream someone else creates did not appear in time; the message says who makes it."""


class PublishError(RuntimeError):
    """JetStream did not store a batch; nothing of it was stored, so it can be sent again."""


class DuplicateInBatch(PublishError):
    """The batch holds a Nats-Msg-Id the stream already has (a resend after a crash).

    The server refuses such a batch whole (err_code 10201); send its messages one by
    one instead, and the server's dedupe acknowledges the ones it already holds.
    """


ERR_BATCH_DUPLICATE_MSG_ID = 10201


async def connect(
    urls: Sequence[str], name: str, *, credentials: NatsCredentials | None = None, timeout: float = 30.0
) -> NATS:
    """Connect (as the user of `credentials`, if given), trying the first connection until `timeout`;
    reconnect forever afterwards. A server that refuses the user ends it at once.

    nats-py told to reconnect forever also retries its first connection forever, reporting each failure to
    the error callback only: that callback is where a refusal is seen, and the deadline is kept here.
    """
    refused = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        if is_authorization_refusal(exc):
            refused.set()
        await _log_error(exc)

    nc = NATS()
    connecting = asyncio.create_task(nc.connect(
        servers=list(urls),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,  # type: ignore[arg-type]  # typed int, slept as a float
        connect_timeout=2,
        allow_reconnect=True,
        error_cb=on_error,
        disconnected_cb=_log_disconnect,
        reconnected_cb=_log_reconnect,
        **(credentials.connect_options() if credentials is not None else {}),
    ))
    refusal = asyncio.create_task(refused.wait())
    try:
        done, _ = await asyncio.wait({connecting, refusal}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        refusal.cancel()
    servers = ", ".join(urls)
    failure: BaseException | None = None
    if connecting in done:
        failure = connecting.exception()
        if failure is None:
            return nc
    else:
        connecting.cancel()
        await asyncio.gather(connecting, return_exceptions=True)
    with contextlib.suppress(Exception):  # half-open: whatever it holds goes
        await nc.close()
    if refused.is_set() or (failure is not None and is_authorization_refusal(failure)):
        who = f"as {credentials.user} ({credentials.path})" if credentials else "without credentials"
        raise ConnectionError(f"NATS at {servers} refused the connection {who}: authorization violation; "
                              "are these the credentials of this mesh's NATS?")
    if failure is not None:  # nats raises several unrelated types for "no server"
        raise ConnectionError(f"cannot connect to NATS at {servers}: {failure}") from failure
    raise ConnectionError(f"cannot connect to NATS at {servers}: no answer within {timeout:.0f}s")


def is_authorization_refusal(exc: BaseException) -> bool:
    """The server refused the user (nats-py raises a plain Error for it at the first connection)."""
    return isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in str(exc).lower()


async def _log_error(exc: Exception) -> None:
    log.warning("NATS error: %s", exc)


async def _log_disconnect() -> None:
    log.warning("NATS disconnected")


async def _log_reconnect() -> None:
    log.info("NATS reconnected")


def stream_subjects(stream: str) -> list[str]:
    """What a service's stream holds: `ORDER` holds `order.>`."""
    return [f"{stream.lower()}.>"]


def stream_config(name: str, subjects: list[str], replicas: int, max_age_s: float = 0.0) -> StreamConfig:
    """`max_age_s`: how long the stream keeps a message (0: for ever); the dedupe window never exceeds it."""
    return StreamConfig(
        name=name,
        subjects=subjects,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        num_replicas=replicas,
        duplicate_window=min(DUPLICATE_WINDOW_S, max_age_s) if max_age_s else DUPLICATE_WINDOW_S,
        max_age=max_age_s or None,
        allow_atomic=True,
    )


async def ensure_stream(
    js: JetStreamContext, name: str, subjects: list[str], replicas: int = 1, *, max_age_s: float = 0.0,
    timeout: float = API_RETRY_S,
) -> None:
    """Create the stream, or bring an existing one to this configuration (its retention too). Idempotent."""
    config = stream_config(name, subjects, replicas, max_age_s)
    await ask_until_answered(lambda: _ensure_stream(js, config), f"stream {name}", timeout=timeout)


async def bind_stream(js: JetStreamContext, name: str, owner: str, *, timeout: float = BIND_WAIT_S) -> None:
    """Return once stream `name` exists, without creating it: on the mesh's bus a service creates only its
    own stream, and `owner` (who creates this one) says what to start when it never appears."""
    deadline = time.monotonic() + timeout
    attempt = 0
    while True:
        attempt += 1
        try:
            await ask_until_answered(lambda: js.stream_info(name), f"stream {name}", timeout=timeout)
            return
        except NotFoundError:
            delay = RETRY.delay(attempt)
            if time.monotonic() + delay > deadline:
                raise StreamMissing(f"stream {name} does not exist after {timeout:.0f}s: {owner} creates it; "
                                    "start that first") from None
            if attempt == 1:
                log.info("stream %s does not exist yet (%s creates it); waiting", name, owner)
            await asyncio.sleep(delay)  # polling the server for the stream, under the deadline


async def ask_until_answered(
    request: Callable[[], Awaitable[T]], what: str, *, timeout: float = API_RETRY_S
) -> T:
    """An idempotent JetStream API request, asked again while it times out, until `timeout`.

    A clustered JetStream answers through its meta leader; while one is elected, or while every
    replica of every service creates the same R3 streams and durables at once on a busy machine,
    a request can time out though the server is there.
    """
    deadline = time.monotonic() + timeout
    attempt = 0
    while True:
        attempt += 1
        try:
            return await request()
        except nats.errors.TimeoutError:
            delay = RETRY.delay(attempt + 1)
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s: JetStream API timed out; asking again in %.1fs", what, delay)
            await asyncio.sleep(delay)  # backoff between attempts, under the deadline


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    name, subjects, replicas = config.name or "", config.subjects or [], config.num_replicas
    try:
        await js.stream_info(name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            log.info("created stream %s (%s, R%d)", name, ",".join(subjects), replicas)
            return
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != 10058:  # created meanwhile by another process: update below
                raise
    await js.update_stream(config)


async def publish_atomic(nc: NATS, events: Sequence[OutboundEvent], *, timeout: float = 5.0) -> int:
    """Publish `events` as one JetStream atomic batch: all stored, in order, or none.

    Every message but the last goes out without a reply; the last carries
    `Nats-Batch-Commit` and is a request whose answer is the batch's one ack.
    Returns the stream sequence of the last message.
    """
    if not events:
        raise ValueError("empty batch")
    if len(events) > MAX_ATOMIC_BATCH:
        raise ValueError(f"a batch holds at most {MAX_ATOMIC_BATCH} messages, got {len(events)}")
    batch_id = uuid.uuid4().hex
    last = len(events) - 1
    for i, event in enumerate(events):
        headers = event.nats_headers()
        headers["Nats-Batch-Id"] = batch_id
        headers["Nats-Batch-Sequence"] = str(i + 1)
        if i < last:
            await nc.publish(event.subject, event.payload, headers=headers)
            continue
        headers["Nats-Batch-Commit"] = "1"
        try:
            reply = await nc.request(event.subject, event.payload, timeout=timeout, headers=headers)
        except Exception as exc:
            raise PublishError(f"batch of {len(events)} not acknowledged: {exc!r}") from exc
    ack = json.loads(reply.data or b"{}")
    if "error" in ack:
        if ack["error"].get("err_code") == ERR_BATCH_DUPLICATE_MSG_ID:
            raise DuplicateInBatch(f"batch of {len(events)} refused: {ack['error']}")
        raise PublishError(f"batch of {len(events)} refused: {ack['error']}")
    if int(ack.get("count", len(events))) != len(events):
        raise PublishError(f"batch of {len(events)} acknowledged with count {ack.get('count')}")
    return int(ack.get("seq", 0))


async def publish_each(js: JetStreamContext, events: Sequence[OutboundEvent], *, timeout: float = 5.0) -> int:
    """Publish one by one, in order, each waiting for its ack; duplicates are acked by the server."""
    seq = 0
    for event in events:
        try:
            ack = await js.publish(
                event.subject, event.payload, timeout=timeout, headers=event.nats_headers()
            )
        except Exception as exc:
            raise PublishError(f"{event.subject} ({event.event_id}) not acknowledged: {exc!r}") from exc
        seq = ack.seq
    return seq


async def consumer_backlog(js: JetStreamContext, stream: str, durable: str) -> int:
    """Messages the durable consumer has not yet acked: 0 once it has taken all its filter matches.

    `num_pending` alone is not enough: the server tells consumers of a stored message
    asynchronously, so just after a publish is acknowledged it can still read 0. The last
    stored message the consumer's filter matches must also have been delivered.
    """
    info = await js.consumer_info(stream, durable)
    backlog = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
    if backlog:
        return backlog
    config = info.config
    filters = config.filter_subjects or ([config.filter_subject] if config.filter_subject else [">"])
    for subject in filters:
        try:
            last = await js.get_last_msg(stream, subject)
        except NotFoundError:
            continue
        if last.seq is not None and last.seq > info.delivered.stream_seq:
            return 1  # stored, not yet counted: at least one
    return 0
