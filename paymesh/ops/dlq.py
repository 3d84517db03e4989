"""`paymesh dlq`: list the dead-lettered events and replay them onto their original subjects."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from paymesh.chassis.jetstream import DLQ_STREAM
from paymesh.ops.mesh_nats import MeshNotFound, NatsAddress, connect

# Headers the DLQ adds; a replay strips them so the event travels as it first did.
DLQ_HEADERS = (
    "Paymesh-Dlq-Reason",
    "Paymesh-Dlq-Error",
    "Paymesh-Original-Subject",
    "Paymesh-Original-Stream",
    "Paymesh-Original-Seq",
    "Paymesh-Original-Msg-Id",
    "Paymesh-Consumer",
    "Paymesh-Deliveries",
)


@dataclass(frozen=True)
class DeadLetter:
    seq: int
    subject: str
    original_subject: str
    consumer: str
    reason: str
    error: str
    deliveries: str
    type: str
    headers: dict[str, str]
    data: bytes


async def list_dead_letters(nc: NATS, subject: str = "dlq.>", limit: int = 1000) -> list[DeadLetter]:
    """The DLQ's messages in order (at most `limit`), without consuming them."""
    js = nc.jetstream()
    try:
        info = await js.stream_info(DLQ_STREAM)
    except NotFoundError:
        return []
    out: list[DeadLetter] = []
    if info.state.messages == 0:
        return out  # an empty stream reports first_seq 0 (or past last_seq), which get_msg refuses
    seq = info.state.first_seq
    while seq <= info.state.last_seq and len(out) < limit:
        try:
            msg = await js.get_msg(DLQ_STREAM, seq=seq)
        except NotFoundError:  # deleted by an earlier replay
            seq += 1
            continue
        headers = dict(msg.headers or {})
        if _matches(subject, msg.subject or ""):
            out.append(
                DeadLetter(
                    seq=seq,
                    subject=msg.subject or "",
                    original_subject=headers.get("Paymesh-Original-Subject", ""),
                    consumer=headers.get("Paymesh-Consumer", ""),
                    reason=headers.get("Paymesh-Dlq-Reason", ""),
                    error=headers.get("Paymesh-Dlq-Error", ""),
                    deliveries=headers.get("Paymesh-Deliveries", ""),
                    type=headers.get("Paymesh-Type", ""),
                    headers=headers,
                    data=msg.data or b"",
                )
            )
        seq += 1
    return out


def _matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` one token, `>` the rest."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


async def replay(nc: NATS, letter: DeadLetter) -> None:
    """Publish the event again on its original subject, then delete it from the DLQ.

    It goes out under a new Nats-Msg-Id (the stream may still remember the first) but
    with its own event id in the payload, so every consumer that already applied it
    skips it through its inbox, and the one that failed gets another try.
    """
    if not letter.original_subject:
        raise ValueError(f"DLQ message {letter.seq} has no Paymesh-Original-Subject header")
    headers = {k: v for k, v in letter.headers.items() if k not in DLQ_HEADERS}
    original_id = letter.headers.get("Paymesh-Original-Msg-Id") or str(letter.seq)
    headers["Nats-Msg-Id"] = f"replay:{original_id}:{letter.seq}"
    js = nc.jetstream()
    await js.publish(letter.original_subject, letter.data, headers=headers)
    await js.delete_msg(DLQ_STREAM, letter.seq)


def format_table(letters: list[DeadLetter]) -> str:
    if not letters:
        return "DLQ is empty"
    rows = [("seq", "consumer", "original subject", "reason", "deliveries", "error")]
    rows += [
        (str(d.seq), d.consumer, d.original_subject, d.reason, d.deliveries, d.error[:80]) for d in letters
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1] for r in rows]
    return "\n".join(lines)


async def run(address: NatsAddress, action: str, subject: str, seqs: list[int]) -> int:
    """The body of `paymesh dlq list|replay`, as the operator's NATS user (the one that may replay onto any
    stream and delete from the DLQ); returns the exit status."""
    try:
        nc = await connect(address, "paymesh-dlq")
    except MeshNotFound as exc:
        print(f"paymesh: {exc}", file=sys.stderr)
        return 2
    try:
        letters = await list_dead_letters(nc, subject)
        if action == "list":
            print(format_table(letters))
            return 0
        chosen = [d for d in letters if not seqs or d.seq in seqs]
        missing = set(seqs) - {d.seq for d in chosen}
        if missing:
            print(f"not in the DLQ: {', '.join(map(str, sorted(missing)))}")
            return 1
        for letter in chosen:
            await replay(nc, letter)
            print(f"replayed {letter.seq} onto {letter.original_subject}")
        return 0
    except (nats.errors.Error, TimeoutError) as exc:
        # A refused request gets no answer: a user other than the operator's times out here.
        print(f"paymesh: the mesh's NATS at {address.shown()} did not answer as expected ({type(exc).__name__}); "
              "is JetStream on, and are these the operator's credentials (PAYMESH_NATS_CREDS)?", file=sys.stderr)
        return 2
    finally:
        await nc.close()


def main(address: NatsAddress, action: str, subject: str, seqs: list[int]) -> int:
    return asyncio.run(run(address, action, subject, seqs))
