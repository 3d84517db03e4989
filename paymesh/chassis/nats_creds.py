"""Who a process is on the bus: the NATS user whose nkey seed file `<SVC>_NATS_CREDS` (or, for the operator's
tools, PAYMESH_NATS_CREDS) names.

An nkey, not a password: the server holds only the public key and the client answers its nonce with a
signature, so no secret crosses the wire (the bus has no TLS) and none is in the server's config. Each user
receives its replies on its own inbox prefix, `_INBOX.<user>.`, so the server can let it read its own replies
and no one else's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nkeys  # type: ignore[import-untyped]  # nkeys publishes no type information

from paymesh.chassis import redaction

OPERATOR_CREDS_ENV = "PAYMESH_NATS_CREDS"
INBOX_ROOT = "_INBOX"


class CredentialsError(ValueError):
    """A credentials file is missing, unreadable or holds no user seed; the message names the variable
    that named it, never the file's content."""


def inbox_prefix(user: str) -> str:
    """Where `user`'s replies arrive; the server lets only that user subscribe below it."""
    return f"{INBOX_ROOT}.{user}"


@dataclass(frozen=True)
class NatsCredentials:
    """A NATS user: its name (the inbox it reads), the seed file it came from (fine to print) and the seed."""

    user: str
    path: Path
    seed: str = field(repr=False)

    @property
    def public_key(self) -> str:
        return public_key(self.seed)

    def connect_options(self) -> dict[str, Any]:
        """The keyword arguments of `nats.connect` that sign in as this user."""
        return {"nkeys_seed_str": self.seed, "inbox_prefix": inbox_prefix(self.user)}

    @classmethod
    def read(cls, user: str, path: Path, variable: str) -> NatsCredentials:
        """The seed in `path`; CredentialsError naming `variable` when it is missing or holds no user seed."""
        try:
            seed = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise CredentialsError(f"{variable}={path}: cannot read the NATS credentials ({exc.__class__.__name__}); "
                              "`paymesh up` writes them under its data dir (nats-creds/)") from None
        try:
            public_key(seed)
        except (nkeys.NkeysError, ValueError):
            raise CredentialsError(f"{variable}={path} does not hold an nkey user seed (a line starting SU)") from None
        redaction.register(seed)
        return cls(user, path, seed)


def public_key(seed: str) -> str:
    """The `U...` public key of a user seed; ValueError for any other kind of key."""
    if not seed.startswith("SU"):
        raise ValueError("not a user seed")
    pair = nkeys.from_seed(bytearray(seed.encode()))
    try:
        return str(pair.public_key.decode())
    finally:
        pair.wipe()
