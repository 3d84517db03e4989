"""merchants: merchant_id on every row, request ids per merchant

Every product, reservation and request id written before paymesh knew merchants becomes the legacy
merchant's (LEGACY_MERCHANT_ID). A sku is now unique per merchant, so the products' primary key becomes
(merchant_id, sku); the reservations' becomes (merchant_id, order_id), so that another merchant's event
naming an order gets a row of its own and never touches this one.

Revision ID: 8858be37446f
Revises: 6701599ec39e
Create Date: 2026-12-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from paymesh.chassis.schema_steps import add_merchant, new_primary_key, request_ids_per_merchant

revision: str = "8858be37446f"
down_revision: str | Sequence[str] | None = "6701599ec39e"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table -> the column that was its key alone before merchants.
_KEYED = {"products": "sku", "reservations": "order_id"}


def upgrade() -> None:
    request_ids_per_merchant(op)
    for table, key in _KEYED.items():
        add_merchant(op, table)
        new_primary_key(op, table, ["merchant_id", key])


def downgrade() -> None:
    # Back to one global key per table: refused (before anything changes) when two merchants hold the same
    # sku, order id or request id, as the old schema has room for only one of them.
    for table, key in {**_KEYED, "idempotent_requests": "request_id"}.items():
        shared = op.get_bind().execute(
            sa.text(f"SELECT {key} FROM {table} GROUP BY {key} HAVING COUNT(*) > 1 LIMIT 1")
        ).first()
        if shared is not None:
            raise RuntimeError(
                f"cannot downgrade inventory_svc below merchants: {table}.{key} {shared[0]!r} belongs to "
                "more than one merchant"
            )
    for table, key in {**_KEYED, "idempotent_requests": "request_id"}.items():
        new_primary_key(op, table, [key])
        with op.batch_alter_table(table) as batch:
            batch.drop_column("merchant_id")
