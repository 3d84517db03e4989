"""The inbox: which events a consumer has applied, written in the same transaction as their effect."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Column, DateTime, MetaData, String, Table, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from paymesh.chassis.db import conflict_insert


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

    One statement for the batch: a multi-row insert that skips ids already there and
    returns the ones it took. A concurrent claimer of the same id (another replica, on
    PostgreSQL) waits on the primary key; if that one commits, the id is not returned
    here, so an event's effect can never commit twice.
    """
    ids = list(dict.fromkeys(event_ids))
    if not ids:
        return set()
    rows = await conn.execute(
        _claim_statement(inbox, conn.dialect.name), [{"consumer": consumer, "event_id": i} for i in ids]
    )
    return {row[0] for row in rows}


@functools.cache
def _claim_statement(inbox: Table, dialect_name: str) -> Any:
    """Built once per table: one statement whatever the batch size, so SQLAlchemy compiles and keys
    it once; given a list of parameters it is sent as multi-row inserts, RETURNING included."""
    return (
        conflict_insert(inbox, dialect_name)
        .on_conflict_do_nothing(index_elements=["consumer", "event_id"])
        .returning(inbox.c.event_id)
    )
