"""Writes the `authorization` block of deploy/nats/nats-*.conf from paymesh.ops.nats_auth, the one source of the
bus's permissions `paymesh up` writes too, for the users whose seeds are in deploy/nats/creds/ (made where
missing: fixed development keys of a loopback-only stack, as docker-compose.yml's other credentials are).

    .venv/bin/python scripts/deploy_nats.py          rewrite the configs (the rest of each file is kept)
    .venv/bin/python scripts/deploy_nats.py --check  exit 1 naming each config that differs

tests/deploy/test_compose.py runs the check's comparison too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from paymesh.chassis.nats_creds import public_key  # noqa: E402 - after the path above
from paymesh.ops.nats_auth import authorization, new_seed, users  # noqa: E402
from paymesh.ops.services import SPECS  # noqa: E402

NATS_DIR = ROOT / "deploy" / "nats"
CREDS_DIR = NATS_DIR / "creds"


def deploy_authorization(make_missing: bool = False) -> dict[str, Any]:
    """The block every node's config carries, for the committed development seeds."""
    keys = {}
    for user in users(SPECS):
        path = CREDS_DIR / f"{user}.nk"
        if make_missing and not path.exists():
            CREDS_DIR.mkdir(parents=True, exist_ok=True)
            path.write_text(new_seed() + "\n")
        keys[user] = public_key(path.read_text().strip())
    return authorization(keys, SPECS)


def main(argv: list[str]) -> int:
    check = "--check" in argv
    wanted = deploy_authorization(make_missing=not check)
    stale = []
    for conf in sorted(NATS_DIR.glob("nats-*.conf")):
        current = json.loads(conf.read_text())
        if current.get("authorization") == wanted:
            continue
        stale.append(conf.relative_to(ROOT))
        if not check:
            conf.write_text(json.dumps({**current, "authorization": wanted}, indent=2) + "\n")
    if check and stale:
        print(f"stale authorization in {', '.join(map(str, stale))}: run scripts/deploy_nats.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
