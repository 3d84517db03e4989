"""What a log line must never carry, masked where every line is formatted: API keys, bearer values, payment
tokens, and the secrets a process registers when it loads them (the key pepper, NATS nkey seeds)."""

from __future__ import annotations

import logging
import re
import threading

# A paymesh key keeps what its display prefix shows (`sk_mesh_AbCd`, as `paymesh keys list` and an
# ApiKey's repr do); the rest of the secret goes.
_KEY = re.compile(r"\b((?:sk|ok|pl)_mesh_[0-9A-Za-z]{4})[0-9A-Za-z]+")
_BEARER = re.compile(r"(?i)\b(bearer)\s+[^\s'\",)]+")
# A gateway token is payment data: only that one was there is kept.
_TOKEN = re.compile(r"\btok_[0-9A-Za-z_]+")
MASK = "[redacted]"

_secrets: set[str] = set()
_lock = threading.Lock()
_pattern: re.Pattern[str] | None = None


_registered: tuple[str, ...] = ()


def register(secret: str) -> None:
    """Mask this exact value in every line from now on (too short a value would mask ordinary words)."""
    global _pattern, _registered
    if len(secret) < 8:
        return
    with _lock:
        _secrets.add(secret)
        _registered = tuple(_secrets)
        _pattern = re.compile("|".join(re.escape(s) for s in sorted(_secrets, key=len, reverse=True)))


def redact(text: str) -> str:
    """Each pattern runs only on a line holding the literal it starts with: a substring test costs a fraction of
    a regex scan, and nearly every line holds none (a log line's redaction was 17 µs, most of its formatting)."""
    pattern = _pattern
    if pattern is not None and any(s in text for s in _registered):
        text = pattern.sub(MASK, text)
    if "_mesh_" in text:
        text = _KEY.sub(r"\1…", text)
    if "bearer" in text.lower():
        text = _BEARER.sub(rf"\1 {MASK}", text)
    if "tok_" in text:
        text = _TOKEN.sub("tok_…", text)
    return text


class RedactingFormatter(logging.Formatter):
    """Masks the whole formatted line, message and traceback alike: an exception's text is where a secret
    passed as an argument would otherwise reach the log."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def install(handler: logging.Handler, fmt: str) -> None:
    handler.setFormatter(RedactingFormatter(fmt))
