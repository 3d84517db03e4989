"""The `alembic -n gateway_mock ...` entry point (see alembic.ini); the service itself migrates without it."""

from gateway_mock.service import SPEC
from paymesh.chassis.migrations import run_alembic_env

run_alembic_env(SPEC)
