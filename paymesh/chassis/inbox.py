"""The inbox: which events a consumer has applied, written in the same transaction as their effect."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Column, DateTime, MetaData, String, Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection


def inbox_table(metadata: MetaData) -> Table:
    if "inbox" in metadata.tables:
        return metadata.tables["inbox"]
    return Table(
        "inbox",
        metadata,
        Column("consumer", String(100), primary_key=True),
        Column("event_id", String(64), primary_key=True),
        Column("applied_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )


async def applied(conn: AsyncConnection, inbox: Table, consumer: str, event_ids: list[str]) -> set[str]:
    """Which of `event_ids` this consumer has applied already."""
    if not event_ids:
        return set()
    rows = await conn.execute(
        select(inbox.c.event_id).where(inbox.c.consumer == consumer, inbox.c.event_id.in_(event_ids))
    )
    return {row[0] for row in rows}


async def claim(conn: AsyncConnection, inbox: Table, consumer: str, event_ids: Iterable[str]) -> set[str]:
    """Record `event_ids` as applied by `consumer`; return those not applied before.

    Set-based: one SELECT for the batch, one executemany INSERT. A concurrent claimer
    (another replica) makes the INSERT fail on the primary key and the transaction
    roll back, so an event's effect can never commit twice.
    """
    ids = list(dict.fromkeys(event_ids))
    if not ids:
        return set()
    done = await applied(conn, inbox, consumer, ids)
    fresh = [i for i in ids if i not in done]
    if fresh:
        await conn.execute(insert(inbox), [{"consumer": consumer, "event_id": i} for i in fresh])
    return set(fresh)
