"""API keys for the tests' services: one pepper every rig shares, keys written to the bucket as `paymesh keys` would."""

from __future__ import annotations

from datetime import timedelta

from paymesh.chassis import jetstream
from paymesh.chassis.auth import MERCHANT_SCOPES, KeyStore, Pepper, Scope
from paymesh.chassis.auth.keys import ApiKeyRecord, new_platform_key
from paymesh.chassis.auth.pepper import PEPPER_ENV

# What every in-process rig's environment sets as PAYMESH_KEY_PEPPER, so keys made here are found there.
TEST_PEPPER = "tests-pepper-0123456789abcdef0123456789abcdef"
AUTH_ENV = {PEPPER_ENV: TEST_PEPPER}
MERCHANT_A = "mer_aaaaaaaaaaaaaaaa"
MERCHANT_B = "mer_bbbbbbbbbbbbbbbb"


async def issue(
    nats_url: str,
    merchant_id: str = MERCHANT_A,
    scopes: frozenset[Scope] = MERCHANT_SCOPES,
    *,
    operator: bool = False,
    expires_in: timedelta | None = None,
) -> tuple[ApiKeyRecord, str]:
    """A new key in the mesh's bucket and its secret. Made before a service starts, the service loads it
    at start; made after, it is known once the registry's watch delivers it (milliseconds)."""
    nc = await jetstream.connect([nats_url], "tests-keys")
    try:
        store = await KeyStore.open(nc.jetstream(), Pepper(TEST_PEPPER.encode()))
        record, secret = await store.create(merchant_id, scopes, expires_in=expires_in, operator=operator)
        return record, secret.reveal()
    finally:
        await nc.close()


async def key_for(nats_url: str, merchant_id: str = MERCHANT_A, scopes: frozenset[Scope] = MERCHANT_SCOPES) -> str:
    """Just the secret of a new merchant key."""
    return (await issue(nats_url, merchant_id, scopes))[1]


# The bank's platform key for the rigs: gateway_mock accepts it (GATEWAY_MOCK_PLATFORM_KEY), payment_svc
# presents it (PAYMENT_SVC_GATEWAY_API_KEY). Made once per test run, as `paymesh up` makes one per data dir.
PLATFORM_KEY = new_platform_key().reveal()
PLATFORM_ENV = {"GATEWAY_MOCK_PLATFORM_KEY": PLATFORM_KEY, "PAYMENT_SVC_GATEWAY_API_KEY": PLATFORM_KEY}
