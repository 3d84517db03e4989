"""The pepper of the key hashes: `PAYMESH_KEY_PEPPER`, else a file under the data dir made once, mode 0600."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

from paymesh.chassis import redaction
from paymesh.chassis.auth.keys import Pepper
from paymesh.chassis.config import ConfigError

PEPPER_ENV = "PAYMESH_KEY_PEPPER"
PEPPER_FILE = "key_pepper"
MIN_PEPPER_CHARS = 32


def load_pepper(env: Mapping[str, str], data_dir: Path) -> Pepper:
    """Every replica and the operator commands must hash with the same pepper, so a made file is kept."""
    if raw := env.get(PEPPER_ENV):
        return _checked(raw.strip(), PEPPER_ENV)
    path = data_dir / PEPPER_FILE
    if not path.exists():
        _create(path)
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the key pepper {path}: {exc.__class__.__name__}; "
                          f"fix its permissions or set {PEPPER_ENV}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"the key pepper {path} is readable by others (mode {stat.S_IMODE(mode):o}): chmod 600 it")
    return _checked(text.strip(), str(path))


def _checked(text: str, source: str) -> Pepper:
    if len(text) < MIN_PEPPER_CHARS:
        # The length, never the value: a pepper does not go into an error message.
        raise ConfigError(f"the key pepper from {source} is {len(text)} characters; it needs at least "
                          f"{MIN_PEPPER_CHARS} (e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)")
    redaction.register(text)  # a pepper in a log line (an exception's text) would be masked
    return Pepper(text.encode())


def _create(path: Path) -> None:
    """Written whole to a private temporary file, then linked into place: a process that starts at the
    same moment reads either no file or the whole pepper, and the first link wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another process made it first: theirs is the pepper
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
