"""The `alembic -n order_svc ...` entry point (see alembic.ini); the service itself migrates without it."""

from order_svc.service import SPEC
from paymesh.chassis.migrations import run_alembic_env

run_alembic_env(SPEC)
