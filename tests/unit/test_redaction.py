"""The redaction every service's log line goes through: keys, bearer values, tokens and registered secrets."""

from __future__ import annotations

import io
import logging

from paymesh.chassis import redaction
from paymesh.chassis.auth.keys import new_platform_key, new_secret

PEPPER = "pepper-for-the-redaction-test-0123456789"


def test_keys_bearer_values_tokens_and_registered_secrets_are_masked() -> None:
    merchant, operator = new_secret().reveal(), new_secret(operator=True).reveal()
    platform = new_platform_key().reveal()
    redaction.register(PEPPER)
    line = (f"key {merchant} op={operator} ({platform}) metadata=[('authorization', 'Bearer {merchant}')] "
            f"token tok_chargeDeclined pepper {PEPPER}")
    masked = redaction.redact(line)
    for secret in (merchant, operator, platform, PEPPER, "tok_chargeDeclined"):
        assert secret not in masked, secret
        assert secret[12:] not in masked or len(secret) < 12
    assert merchant[:12] + "…" in masked, "the display prefix stays, as `paymesh keys list` shows it"
    assert "Bearer [redacted]" in masked and "tok_…" in masked
    assert redaction.redact("order ord_1 CONFIRMED in 12.5ms") == "order ord_1 CONFIRMED in 12.5ms"


def test_a_traceback_is_masked_too() -> None:
    secret = new_secret().reveal()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    redaction.install(handler, "%(levelname)s %(message)s")
    log = logging.getLogger("tests.redaction")
    log.addHandler(handler)
    log.propagate = False
    try:
        try:
            raise ValueError(f"refused {secret}")
        except ValueError:
            log.exception("a call failed for %s", secret)
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    assert "ValueError: refused" in text and secret not in text and secret[12:] not in text

