"""What the operator makes on a mesh's NATS before any service starts: the streams every service shares but
none owns, the DLQ stream and the keys' bucket. The services only bind them (their NATS users may not
create them). `paymesh up` calls `ensure_shared`; docker-compose runs `python -m paymesh.ops.nats_setup`.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping

from nats.js import JetStreamContext

from paymesh.chassis import jetstream
from paymesh.chassis.auth.bucket import ensure_bucket
from paymesh.chassis.config import ConfigError, data_dir, env_int
from paymesh.chassis.nats_creds import CredentialsError
from paymesh.ops.nats_auth import operator_credentials


async def ensure_shared(js: JetStreamContext, replicas: int = 1) -> None:
    """The DLQ stream and the keys' bucket, created if absent; idempotent, safe for two operators at once."""
    await jetstream.ensure_stream(js, jetstream.DLQ_STREAM, jetstream.DLQ_SUBJECTS, replicas)
    await jetstream.ask_until_answered(lambda: ensure_bucket(js, replicas), "the keys' bucket")


async def setup(env: Mapping[str, str]) -> None:
    """As the operator (PAYMESH_NATS_CREDS), on the NATS of PAYMESH_NATS_URL, streams at PAYMESH_STREAM_REPLICAS."""
    urls = [u.strip() for u in (env.get("PAYMESH_NATS_URL") or "nats://127.0.0.1:4222").split(",") if u.strip()]
    try:
        credentials = operator_credentials(env, data_dir(env))
    except CredentialsError as exc:
        raise ConfigError(str(exc)) from None
    replicas = env_int(env, "PAYMESH_STREAM_REPLICAS", 1)
    nc = await jetstream.connect(urls, "paymesh-nats-setup", credentials=credentials, timeout=60.0)
    try:
        await ensure_shared(nc.jetstream(), replicas)
    finally:
        await nc.close()
    print(f"the DLQ stream and the keys' bucket are ready (R{replicas})", flush=True)


def main() -> int:
    try:
        asyncio.run(setup(dict(os.environ)))
    except (ConfigError, ConnectionError) as exc:
        print(f"paymesh nats setup: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
