"""merchants: merchant_id on every row, request ids per merchant

Every order and request id written before paymesh knew merchants becomes the legacy merchant's
(LEGACY_MERCHANT_ID). Order ids stay the primary key: order_svc makes them (ord_ and a UUID), so they are
unique across merchants already; a request id is now unique per merchant. ListOrders reads one merchant's
orders, so its two indexes lead with merchant_id; the deadline sweeper's (status, deadline) stays global.

Revision ID: 4d8a16896980
Revises: 8347d7ab6af9
Create Date: 2026-12-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from paymesh.chassis.schema_steps import add_merchant, new_primary_key, request_ids_per_merchant

revision: str = "4d8a16896980"
down_revision: str | Sequence[str] | None = "8347d7ab6af9"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (old index, its columns) -> (new index, its columns)
INDEXES = [
    ("ix_orders_newest", ["create_time", "order_id"],
     "ix_orders_merchant_newest", ["merchant_id", "create_time", "order_id"]),
    ("ix_orders_customer_newest", ["customer_id", "create_time", "order_id"],
     "ix_orders_merchant_customer_newest", ["merchant_id", "customer_id", "create_time", "order_id"]),
]


def upgrade() -> None:
    request_ids_per_merchant(op)
    # Dropped before the column is added: SQLite's batch mode then rebuilds the table with only the
    # index that stays.
    for old, _, _, _ in INDEXES:
        op.drop_index(old, table_name="orders")
    add_merchant(op, "orders")
    for _, _, new, columns in INDEXES:
        op.create_index(new, "orders", columns, unique=False)


def downgrade() -> None:
    """Back to one merchant: every order stays, its merchant forgotten. Refused, before anything changes,
    when two merchants used the same request id, which the old schema has room for only once."""
    shared = op.get_bind().execute(
        sa.text("SELECT request_id FROM idempotent_requests GROUP BY request_id HAVING COUNT(*) > 1 LIMIT 1")
    ).first()
    if shared is not None:
        raise RuntimeError(
            f"cannot downgrade order_svc below merchants: request_id {shared[0]!r} belongs to more than one merchant"
        )
    for _, _, new, _ in INDEXES:
        op.drop_index(new, table_name="orders")
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("merchant_id")
    for old, columns, _, _ in INDEXES:
        op.create_index(old, "orders", columns, unique=False)
    new_primary_key(op, "idempotent_requests", ["request_id"])
    with op.batch_alter_table("idempotent_requests") as batch:
        batch.drop_column("merchant_id")
