"""payment_svc's own settings: the platform's gateway key is required, and never shown."""

from __future__ import annotations

import pytest

from payment_svc.service import GATEWAY_API_KEY_ENV, PaymentSettings
from paymesh.chassis.config import ConfigError

SECRET = "pl_mesh_" + "S3cr3t" * 7 + "x"


@pytest.mark.parametrize("env", [{}, {GATEWAY_API_KEY_ENV: ""}, {GATEWAY_API_KEY_ENV: "  "}])
def test_a_missing_gateway_key_is_a_config_error_that_says_what_to_do(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as err:
        PaymentSettings.from_env(env)
    assert GATEWAY_API_KEY_ENV in str(err.value) and "paymesh up" in str(err.value)


def test_the_gateway_key_is_kept_and_hidden_from_every_repr() -> None:
    settings = PaymentSettings.from_env({GATEWAY_API_KEY_ENV: SECRET, "PAYMENT_SVC_GATEWAY_ADDR": "10.0.0.1:1"})
    assert settings.gateway_api_key.reveal() == SECRET
    assert settings.gateway_addr == "10.0.0.1:1"
    for shown in (repr(settings), str(settings), repr(settings.gateway_api_key), f"{settings.gateway_api_key}"):
        assert SECRET not in shown and "S3cr3t" not in shown
