"""merchants: merchant_id on every row, request ids per merchant

Every payment, audit step and refund belongs to a merchant; the rows already there become the legacy
merchant's (LEGACY_MERCHANT_ID). An order id is unique per merchant now, not across them, and the indexes
that serve a merchant's reads lead with merchant_id. The gateway's refund idempotency keys stay unique
across merchants: the gateway knows one namespace, the platform's.

Revision ID: cda7f924a068
Revises: e622bbc180b7
Create Date: 2026-12-01 00:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from paymesh.chassis.schema_steps import add_merchant, new_primary_key, request_ids_per_merchant

revision: str = "cda7f924a068"
down_revision: str | Sequence[str] | None = "e622bbc180b7"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("payments", "payment_events", "refunds")
# The initial revision's UNIQUE (order_id) is unnamed: PostgreSQL named it by its convention; on SQLite
# it is reflected without a name, and this convention gives it one that batch mode can drop.
PG_ORDER_UNIQUE = "payments_order_id_key"
SQLITE_NAMES = {"uq": "uq_%(table_name)s_%(column_0_name)s"}
SQLITE_ORDER_UNIQUE = "uq_payments_order_id"
MERCHANT_ORDER_UNIQUE = "uq_payments_merchant_order"
# (old index, its columns) -> (new index, its columns)
INDEXES = [
    ("payments", "ix_payments_created", ["create_time", "payment_id"],
     "ix_payments_merchant_created", ["merchant_id", "create_time", "payment_id"]),
    ("payment_events", "ix_payment_events_payment_id", ["payment_id"],
     "ix_payment_events_merchant_payment", ["merchant_id", "payment_id"]),
    ("refunds", "ix_refunds_payment_id", ["payment_id"],
     "ix_refunds_merchant_payment", ["merchant_id", "payment_id"]),
]


def _sqlite() -> bool:
    return bool(op.get_bind().dialect.name == "sqlite")


def upgrade() -> None:
    request_ids_per_merchant(op)
    for table, old, _, _, _ in INDEXES:
        op.drop_index(old, table_name=table)
    for table in TABLES:
        add_merchant(op, table)
    if _sqlite():
        with op.batch_alter_table("payments", recreate="always", naming_convention=SQLITE_NAMES) as batch:
            batch.drop_constraint(SQLITE_ORDER_UNIQUE, type_="unique")
            batch.create_unique_constraint(MERCHANT_ORDER_UNIQUE, ["merchant_id", "order_id"])
    else:
        op.drop_constraint(PG_ORDER_UNIQUE, "payments", type_="unique")
        op.create_unique_constraint(MERCHANT_ORDER_UNIQUE, "payments", ["merchant_id", "order_id"])
    for table, _, _, new, columns in INDEXES:
        op.create_index(new, table, columns, unique=False)


def downgrade() -> None:
    """Back to one merchant: fails (IntegrityError) once two merchants hold the same order id or request id,
    since the old schema cannot keep both; the merchant of each row is dropped."""
    for table, _, _, new, _ in INDEXES:
        op.drop_index(new, table_name=table)
    if _sqlite():
        with op.batch_alter_table("payments", recreate="always") as batch:
            batch.drop_constraint(MERCHANT_ORDER_UNIQUE, type_="unique")
            batch.create_unique_constraint(SQLITE_ORDER_UNIQUE, ["order_id"])
    else:
        op.drop_constraint(MERCHANT_ORDER_UNIQUE, "payments", type_="unique")
        op.create_unique_constraint(PG_ORDER_UNIQUE, "payments", ["order_id"])
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("merchant_id")
    new_primary_key(op, "idempotent_requests", ["request_id"])
    with op.batch_alter_table("idempotent_requests") as batch:
        batch.drop_column("merchant_id")
    for table, old, columns, _, _ in INDEXES:
        op.create_index(old, table, columns, unique=False)
