"""gateway_mock's Alembic history; `paymesh.chassis.migrations` runs it."""
