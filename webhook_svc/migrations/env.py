"""The `alembic -n webhook_svc ...` entry point (see alembic.ini); the service itself migrates without it."""

from paymesh.chassis.migrations import run_alembic_env
from webhook_svc.service import SPEC

run_alembic_env(SPEC)
