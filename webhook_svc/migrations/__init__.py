"""webhook_svc's Alembic history; `paymesh.chassis.migrations` runs it."""
