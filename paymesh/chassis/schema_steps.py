"""Schema changes more than one service's Alembic history makes, written once. Frozen: a revision calls
one of these, so a step never changes after it shipped; a new change is a new function."""

from __future__ import annotations

import warnings
from typing import Any

import sqlalchemy as sa

# The merchant that rows written before paymesh knew merchants belong to (revision "merchants" of each
# service), and that an event published by such a release speaks for. `paymesh merchants create
# --id mer_legacy NAME` gives an operator a key to read them.
LEGACY_MERCHANT_ID = "mer_legacy"
MERCHANT_ID_LENGTH = 40


def merchant_column(**kw: Any) -> sa.Column[str]:
    """`merchant_id`, filled with LEGACY_MERCHANT_ID on the rows already there (then no default)."""
    return sa.Column("merchant_id", sa.String(length=MERCHANT_ID_LENGTH), nullable=False,
                     server_default=LEGACY_MERCHANT_ID, **kw)


def add_merchant(op: Any, table: str) -> None:
    """Adds `merchant_id` to `table`, every existing row the legacy merchant's, and drops the default so
    that a new row must name its merchant. Batch mode: SQLite rebuilds the table, PostgreSQL alters it."""
    with op.batch_alter_table(table) as batch:
        batch.add_column(merchant_column())
    with op.batch_alter_table(table) as batch:
        batch.alter_column("merchant_id", server_default=None, existing_type=sa.String(length=MERCHANT_ID_LENGTH),
                           existing_nullable=False)


def new_primary_key(op: Any, table: str, columns: list[str]) -> None:
    """The table's primary key becomes `columns`: PostgreSQL swaps the constraint (named `<table>_pkey`, its
    default), SQLite rebuilds the table with the new key."""
    if op.get_bind().dialect.name == "sqlite":
        # SQLAlchemy warns that the copy's reflected key columns differ from the new key: that is the point
        # of the rebuild, and the key comes out as asked (tests/integration/test_migrations.py compares).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Table '_alembic_tmp_\w+' specifies columns .* as primary_key")
            with op.batch_alter_table(table, recreate="always") as batch:
                batch.create_primary_key(f"{table}_pkey", columns)
    else:
        op.drop_constraint(f"{table}_pkey", table, type_="primary")
        op.create_primary_key(f"{table}_pkey", table, columns)


def request_ids_per_merchant(op: Any) -> None:
    """The chassis' request log: `merchant_id` joins the primary key, so two merchants may use one request id."""
    add_merchant(op, "idempotent_requests")
    new_primary_key(op, "idempotent_requests", ["merchant_id", "request_id"])
