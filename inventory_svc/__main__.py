"""`python -m inventory_svc`: run inventory_svc with settings from the environment."""

from inventory_svc.service import SPEC
from paymesh.chassis.service import run_service

if __name__ == "__main__":
    raise SystemExit(run_service(SPEC))
