"""The JetStream KV bucket of the API keys (`key.<key_id>`) and of their merchants (`merchant.<merchant_id>`)."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

from paymesh.chassis.jetstream import bind_stream

BUCKET = "PAYMESH_KEYS"
# A key's last states (created, rolled, revoked) stay readable for an operator who asks why.
HISTORY = 5
ENTRY_PREFIX = "key."
# When a key was last used, coarsely (LAST_USE_GRAIN): beside its record, so writing it never touches the
# record a revocation or roll updates by revision.
USED_PREFIX = "used."


def entry_name(key_id: str) -> str:
    return ENTRY_PREFIX + key_id


def used_entry(key_id: str) -> str:
    return USED_PREFIX + key_id


async def bind_bucket(js: JetStreamContext, bucket: str = BUCKET) -> KeyValue:
    """The bucket, once it exists: the services read it, the operator makes it (their NATS users may not)."""
    await bind_stream(js, f"KV_{bucket}", "the operator (`paymesh up`, `paymesh merchants create`, or "
                      "`python -m paymesh.ops.nats_setup`)")
    return await js.key_value(bucket)


async def ensure_bucket(js: JetStreamContext, replicas: int = 1, bucket: str = BUCKET) -> KeyValue:
    """Bind the bucket, creating it if absent; creating the same one twice at once is harmless."""
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        config = KeyValueConfig(bucket=bucket, history=HISTORY, replicas=replicas, storage=StorageType.FILE,
                                description="paymesh API keys: keyed hashes, never secrets")
        return await js.create_key_value(config)
