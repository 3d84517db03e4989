"""`python -m gateway_mock`: run gateway_mock with settings from the environment."""

from gateway_mock.service import SPEC
from paymesh.chassis.service import run_service

if __name__ == "__main__":
    raise SystemExit(run_service(SPEC))
