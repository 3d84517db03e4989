"""`python -m webhook_svc`: run webhook_svc with settings from the environment."""

from paymesh.chassis.service import run_service
from webhook_svc.service import SPEC

if __name__ == "__main__":
    raise SystemExit(run_service(SPEC))
