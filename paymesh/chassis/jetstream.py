"""JetStream plumbing: connecting, ensuring streams, and atomic batch publishing."""

from __future__ import annotations

import asyncio
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

T = TypeVar("T")

log = logging.getLogger(__name__)

DLQ_STREAM = "DLQ"
DLQ_SUBJECTS = ["dlq.>"]
# Server-side dedupe of Nats-Msg-Id; the inbox dedupes beyond this window.
DUPLICATE_WINDOW_S = 120.0
MAX_ATOMIC_BATCH = 1000  # nats-server's limit on one atomic batch
API_RETRY_S = 30.0  # how long ask_until_answered asks a JetStream API that times out
# Between attempts to reach a NATS server that is not up yet, or a JetStream API that timed out.
RETRY = Backoff(base_s=0.1, cap_s=2.0)


class PublishError(RuntimeError):
    """JetStream did not store a batch; nothing of it was stored, so it can be sent again."""


class DuplicateInBatch(PublishError):
    """The batch holds a Nats-Msg-Id the stream already has (a resend after a crash).

    The server refuses such a batch whole (err_code 10201); send its messages one by
    one instead, and the server's dedupe acknowledges the ones it already holds.
    """


ERR_BATCH_DUPLICATE_MSG_ID = 10201


async def connect(urls: Sequence[str], name: str, *, timeout: float = 30.0) -> NATS:
    """Connect, retrying the first connection until `timeout`; reconnect forever afterwards."""
    deadline = time.monotonic() + timeout
    attempt = 0
    while True:
        attempt += 1
        try:
            return await nats.connect(
                servers=list(urls),
                name=name,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                connect_timeout=2,
                allow_reconnect=True,
                error_cb=_log_error,
                disconnected_cb=_log_disconnect,
                reconnected_cb=_log_reconnect,
            )
        except Exception as exc:  # nats raises several unrelated types for "no server yet"
            delay = RETRY.delay(attempt)
            if time.monotonic() + delay > deadline:
                raise ConnectionError(f"cannot connect to NATS at {', '.join(urls)}: {exc}") from exc
            log.warning("NATS at %s not reachable yet (%s); retrying", ",".join(urls), exc)
            await asyncio.sleep(delay)  # backoff between connection attempts


async def _log_error(exc: Exception) -> None:
    log.warning("NATS error: %s", exc)


async def _log_disconnect() -> None:
    log.warning("NATS disconnected")


async def _log_reconnect() -> None:
    log.info("NATS reconnected")


def stream_config(name: str, subjects: list[str], replicas: int) -> StreamConfig:
    return StreamConfig(
        name=name,
        subjects=subjects,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        num_replicas=replicas,
        duplicate_window=DUPLICATE_WINDOW_S,
        allow_atomic=True,
    )


async def ensure_stream(
    js: JetStreamContext, name: str, subjects: list[str], replicas: int = 1, *, timeout: float = API_RETRY_S
) -> None:
    """Create the stream, or bring an existing one to this configuration. Idempotent."""
    config = stream_config(name, subjects, replicas)
    await ask_until_answered(lambda: _ensure_stream(js, config), f"stream {name}", timeout=timeout)


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
