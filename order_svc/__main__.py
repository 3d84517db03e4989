"""`python -m order_svc`: run order_svc with settings from the environment."""

from order_svc.service import SPEC
from paymesh.chassis.service import run_service

if __name__ == "__main__":
    raise SystemExit(run_service(SPEC))
