"""merchants: merchant_id on every row, request ids per merchant

Every charge and refund written before paymesh knew merchants becomes the legacy merchant's
(LEGACY_MERCHANT_ID). At the bank the merchant is the platform's tag on a charge, not an owner: idempotency
keys stay unique across merchants (they are the platform's), so no key or constraint of charges or refunds
changes; ListCharges' merchant filter gets an index leading with merchant_id. The chassis' request log
(which the gateway does not use, but holds) takes request ids per merchant like every service's.
key_attempts and config stay as they were: the platform's keys and the operator's settings, no merchant's.

Revision ID: 03f1e3f7355b
Revises: eea8165148f8
Create Date: 2026-12-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from paymesh.chassis.schema_steps import add_merchant, new_primary_key, request_ids_per_merchant

revision: str = "03f1e3f7355b"
down_revision: str | Sequence[str] | None = "eea8165148f8"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TAGGED = ("charges", "refunds")


def upgrade() -> None:
    request_ids_per_merchant(op)
    for table in TAGGED:
        add_merchant(op, table)
    op.create_index("ix_charges_merchant_id_seq", "charges", ["merchant_id", "seq"], unique=False)


def downgrade() -> None:
    # The charges and refunds lose only their tag (their keys were never per merchant). The request log
    # goes back to one global id: refused, before anything changes, when two merchants hold the same one.
    shared = op.get_bind().execute(
        sa.text("SELECT request_id FROM idempotent_requests GROUP BY request_id HAVING COUNT(*) > 1 LIMIT 1")
    ).first()
    if shared is not None:
        raise RuntimeError(
            f"cannot downgrade gateway_mock below merchants: request id {shared[0]!r} belongs to more than one "
            "merchant"
        )
    op.drop_index("ix_charges_merchant_id_seq", table_name="charges")
    for table in TAGGED:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("merchant_id")
    new_primary_key(op, "idempotent_requests", ["request_id"])
    with op.batch_alter_table("idempotent_requests") as batch:
        batch.drop_column("merchant_id")
