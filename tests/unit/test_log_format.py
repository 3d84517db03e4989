"""PAYMESH_LOG_FORMAT: a JSON object per line (or text with the saga's fields at the end), redacted either way."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from paymesh.chassis.observability import LogFormatter

SAGA = {"order_id": "ord_1", "merchant_id": "mer_1", "event_id": "ev_1", "trace_id": "ab" * 16}


def record(message: str, *args: object, **extra: str) -> logging.LogRecord:
    rec = logging.LogRecord("paymesh.saga", logging.INFO, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_a_json_line_carries_the_sagas_fields_and_is_redacted() -> None:
    line = LogFormatter("payment_svc", "json").format(
        record("charged %s with %s", "ord_1", "Bearer sk_mesh_AbCdEfGhIjKlMnOp tok_visa_4242", **SAGA))
    entry = json.loads(line)
    assert entry["service"] == "payment_svc" and entry["level"] == "INFO" and entry["logger"] == "paymesh.saga"
    assert {k: entry[k] for k in SAGA} == SAGA
    assert "sk_mesh_AbCdEfGh" not in line and "4242" not in line, line
    assert entry["time"].endswith("+00:00")


def test_a_text_line_ends_with_the_fields_it_knows() -> None:
    line = LogFormatter("order_svc", "text").format(record("order.placed", order_id="ord_1", trace_id="ab" * 16))
    assert line.endswith(f"order_svc INFO paymesh.saga: order.placed order_id=ord_1 trace_id={'ab' * 16}"), line


def test_an_empty_field_is_left_out() -> None:
    entry = json.loads(LogFormatter("gateway_mock", "json").format(record("charge", order_id="ord_1", event_id="")))
    assert "event_id" not in entry and entry["order_id"] == "ord_1"


@pytest.mark.timeout(60)
def test_a_log_format_it_does_not_know_stops_the_service_with_one_line() -> None:
    run = subprocess.run([sys.executable, "-m", "gateway_mock"], capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "PAYMESH_LOG_FORMAT": "xml"}, check=False)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip() == "gateway_mock: PAYMESH_LOG_FORMAT='xml': use one of text, json", run.stderr
