"""`paymesh merchants` and `paymesh keys` on a real nats-server, checked through a KeyRegistry as a service holds it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from paymesh.chassis import jetstream
from paymesh.chassis.auth import MERCHANT_SCOPES, ApiKeyExpired, ApiKeyRevoked, KeyRegistry, Scope, load_pepper
from paymesh.chassis.errors import ServiceError
from paymesh.ops import cli
from paymesh.ops.natsserver import NatsServer, free_port
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(60)

MESH_ENV = ("PAYMESH_NATS_URL", "PAYMESH_KEY_PEPPER", "PAYMESH_STREAM_REPLICAS", "PAYMESH_DATA_DIR")


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, self.err
        return json.loads(self.out)


@dataclass
class Operator:
    """Runs `paymesh ...` as a person would, in-process; the data dir is the one the nats-server fixture used."""

    capsys: pytest.CaptureFixture[str]
    registry: KeyRegistry

    async def run(self, *argv: str) -> Result:
        # main runs its own event loop, so off this one.
        code = await asyncio.to_thread(cli.main, list(argv))
        out, err = self.capsys.readouterr()
        return Result(code, out, err)

    async def json(self, *argv: str) -> Any:
        return (await self.run(*argv, "--json")).json()

    async def admitted(self, secret: str) -> None:
        await wait_for(lambda: refusal(self.registry, secret) is None, timeout=5, message="the registry admitting it")


def refusal(registry: KeyRegistry, secret: str, now: datetime | None = None) -> type[ServiceError] | None:
    try:
        registry.lookup(secret, now)
    except ServiceError as exc:
        return type(exc)
    return None


@pytest.fixture
async def ops(nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
              capsys: pytest.CaptureFixture[str]) -> AsyncIterator[Operator]:
    for name in MESH_ENV:
        monkeypatch.delenv(name, raising=False)
    # The fixture's nats-server keeps its store and config at tmp_path/nats, where `paymesh up` keeps its
    # own under the data dir: the commands find it from PAYMESH_DATA_DIR alone.
    monkeypatch.setenv("PAYMESH_DATA_DIR", str(tmp_path))
    nc = await jetstream.connect([nats_server.url], "replica")
    registry = KeyRegistry(nc, load_pepper({}, tmp_path))
    await registry.start()
    try:
        yield Operator(capsys, registry)
    finally:
        await registry.stop()
        await nc.close()


async def merchant(ops: Operator, name: str = "Acme") -> dict[str, Any]:
    made: dict[str, Any] = await ops.json("merchants", "create", name)
    return made


async def test_merchants_create_gives_a_key_the_registry_resolves_to_it_with_every_scope(ops: Operator) -> None:
    made = await merchant(ops, "Acme Ltd")
    assert set(made) == {"merchant_id", "name", "key_id", "api_key"}
    assert made["merchant_id"].startswith("mer_") and made["name"] == "Acme Ltd"
    await ops.admitted(made["api_key"])
    principal = ops.registry.lookup(made["api_key"])
    assert (principal.merchant_id, principal.key_id) == (made["merchant_id"], made["key_id"])
    assert principal.scopes == MERCHANT_SCOPES and not principal.is_operator

    human = await ops.run("merchants", "create", "Beta")
    assert human.code == 0, human.err
    secret = next(word for word in human.out.split() if word.startswith("sk_mesh_"))
    assert "will not be shown again" in human.out
    await ops.admitted(secret)

    listed = await ops.json("merchants", "list")
    assert [(m["merchant_id"], m["name"]) for m in listed][0] == (made["merchant_id"], "Acme Ltd")
    assert [m["name"] for m in listed] == ["Acme Ltd", "Beta"]
    table = await ops.run("merchants", "list")
    assert made["merchant_id"] in table.out and "Beta" in table.out


async def test_the_legacy_merchant_is_made_by_its_id_for_the_rows_from_before_merchants(ops: Operator) -> None:
    made = await ops.json("merchants", "create", "Rows from before merchants", "--id", "mer_legacy")
    assert made["merchant_id"] == "mer_legacy"
    await ops.admitted(made["api_key"])
    assert ops.registry.lookup(made["api_key"]).merchant_id == "mer_legacy"


async def test_keys_create_holds_the_scopes_named_and_expires_when_told(ops: Operator) -> None:
    owner = await merchant(ops)
    before = datetime.now(UTC)
    key = await ops.json("keys", "create", "--merchant", owner["merchant_id"], "--scope", "orders:read",
                         "--scope", "catalog:read", "--expires-in", "30d")
    assert set(key) == {"key_id", "api_key", "merchant_id", "scopes", "expires_at"}
    assert key["merchant_id"] == owner["merchant_id"] and key["scopes"] == ["catalog:read", "orders:read"]
    expires = datetime.fromisoformat(key["expires_at"])
    assert before + timedelta(days=30) <= expires <= datetime.now(UTC) + timedelta(days=30)
    await ops.admitted(key["api_key"])
    assert ops.registry.lookup(key["api_key"]).scopes == {Scope.ORDERS_READ, Scope.CATALOG_READ}

    short = await ops.json("keys", "create", "--merchant", owner["merchant_id"], "--expires-in", "45s")
    await ops.admitted(short["api_key"])
    assert ops.registry.lookup(short["api_key"]).scopes == MERCHANT_SCOPES, "no --scope: every merchant scope"
    assert refusal(ops.registry, short["api_key"], datetime.now(UTC) + timedelta(seconds=46)) is ApiKeyExpired


async def test_keys_list_shows_prefixes_and_states_never_a_secret_or_a_digest(ops: Operator) -> None:
    acme, beta = await merchant(ops, "Acme"), await merchant(ops, "Beta")
    extra = await ops.json("keys", "create", "--merchant", acme["merchant_id"], "--scope", "payments:read")
    secrets = [acme["api_key"], beta["api_key"], extra["api_key"]]
    for secret in secrets:
        await ops.admitted(secret)
    records = [ops.registry.record(ops.registry.lookup(s).key_id) for s in secrets]
    await ops.run("keys", "revoke", extra["key_id"])

    table, listed = await ops.run("keys", "list"), await ops.run("keys", "list", "--json")
    for shown in (table.out, listed.out):
        for secret, record in zip(secrets, records, strict=True):
            assert record is not None
            assert secret not in shown and secret[len("sk_mesh_"):] not in shown
            assert record.digest not in shown
    rows = {row["key_id"]: row for row in listed.json()}
    assert set(rows) == {acme["key_id"], beta["key_id"], extra["key_id"]}
    assert rows[extra["key_id"]]["state"] == "revoked" and rows[acme["key_id"]]["state"] == "active"
    assert rows[acme["key_id"]]["display_prefix"] == acme["api_key"][:12]
    assert acme["api_key"][:12] in table.out and "revoked" in table.out

    only_beta = await ops.json("keys", "list", "--merchant", beta["merchant_id"])
    assert [row["key_id"] for row in only_beta] == [beta["key_id"]]


async def test_a_rolled_key_works_beside_its_successor_for_the_grace_and_a_revoked_is_refused(ops: Operator) -> None:
    old = await merchant(ops)
    await ops.admitted(old["api_key"])
    rolled = await ops.json("keys", "roll", old["key_id"], "--grace", "1h")
    assert rolled["merchant_id"] == old["merchant_id"] and rolled["replaces"] == old["key_id"]
    assert rolled["key_id"] != old["key_id"] and rolled["api_key"] != old["api_key"]
    await ops.admitted(rolled["api_key"])
    await wait_for(lambda: (r := ops.registry.record(old["key_id"])) is not None and r.replaced_by == rolled["key_id"],
                   timeout=5, message="the registry seeing the roll")
    assert refusal(ops.registry, old["api_key"]) is None, "the old key works during the grace"
    grace_end = datetime.fromisoformat(rolled["old_key_expires_at"])
    assert timedelta(minutes=59) < grace_end - datetime.now(UTC) <= timedelta(hours=1)
    assert refusal(ops.registry, old["api_key"], grace_end) is ApiKeyExpired, "and not after it"

    revoked = await ops.json("keys", "revoke", rolled["key_id"])
    assert revoked["key_id"] == rolled["key_id"] and not revoked["already_revoked"]
    await wait_for(lambda: refusal(ops.registry, rolled["api_key"]) is ApiKeyRevoked, timeout=5,
                   message="the registry refusing the revoked key")
    again = await ops.json("keys", "revoke", rolled["key_id"])
    assert again["already_revoked"] and again["revoked_at"] == revoked["revoked_at"]


async def test_an_operator_key_holds_the_operator_scope_and_no_merchant_key_does(ops: Operator) -> None:
    key = await ops.json("keys", "create", "--operator")
    assert key["scopes"] == ["operator"] and key["api_key"].startswith("ok_mesh_")
    await ops.admitted(key["api_key"])
    assert ops.registry.lookup(key["api_key"]).is_operator
    owner = await merchant(ops)
    await ops.admitted(owner["api_key"])
    assert Scope.OPERATOR not in ops.registry.lookup(owner["api_key"]).scopes


@pytest.mark.parametrize(("argv", "says"), [
    (["keys", "create", "--merchant", "{m}", "--expires-in", "3 weeks"], "is not a duration"),
    (["keys", "create", "--merchant", "{m}", "--expires-in", "0s"], "longer than 0"),
    (["keys", "roll", "{k}", "--grace", "1y"], "is not a duration"),
    (["keys", "create", "--merchant", "{m}", "--scope", "orders:delete"], "use one of orders:read, orders:write"),
    (["keys", "create", "--merchant", "{m}", "--scope", "operator"], "--operator"),
    (["keys", "create", "--merchant", "mer_0000000000000000"], "no merchant mer_0000000000000000"),
    (["keys", "create"], "--merchant ID"),
    (["keys", "create", "--operator", "--merchant", "{m}"], "leave out --merchant and --scope"),
    (["keys", "roll", "key_doesNotExist"], "no API key key_doesNotExist"),
    (["keys", "revoke", "key_doesNotExist"], "no API key key_doesNotExist"),
    (["keys", "revoke", "{secret}"], "secret, not an id"),
    (["merchants", "create", " "], "needs a name"),
    (["merchants", "create", "Again", "--id", "{m}"], "exists already"),
    (["merchants", "create", "Odd", "--id", "acme"], "starts mer_"),
])
async def test_a_refused_command_exits_2_with_one_line_and_no_secret(ops: Operator, argv: list[str], says: str) -> None:
    owner = await merchant(ops)
    values = {"m": owner["merchant_id"], "k": owner["key_id"], "secret": owner["api_key"]}
    result = await ops.run(*[arg.format(**values) for arg in argv])
    assert result.code == 2
    assert says in result.err and result.out == ""
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    assert owner["api_key"] not in result.err


async def test_no_mesh_found_or_answering_exits_2_saying_what_to_do(ops: Operator, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYMESH_DATA_DIR", str(tmp_path / "elsewhere"))
    missing = await ops.run("keys", "list")
    assert missing.code == 2 and "no mesh found" in missing.err and "paymesh up" in missing.err
    nobody = f"nats://127.0.0.1:{free_port()}"
    monkeypatch.setenv("PAYMESH_NATS_URL", nobody)
    silent = await ops.run("merchants", "list")
    assert silent.code == 2 and "no mesh reachable" in silent.err and nobody in silent.err
    assert "Traceback" not in missing.err + silent.err


async def test_the_command_as_a_process_with_the_mesh_named_in_its_environment(nats_server: NatsServer,
                                                                               tmp_path: Path) -> None:
    pepper = "process-pepper-" + "p" * 32
    env = {k: v for k, v in os.environ.items() if k not in MESH_ENV}
    env |= {"PAYMESH_NATS_URL": nats_server.url, "PAYMESH_KEY_PEPPER": pepper,
            "PAYMESH_DATA_DIR": str(tmp_path / "operator")}

    def paymesh(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "paymesh.ops.cli", *argv], env=env, capture_output=True,
                              text=True, timeout=30, check=False)

    made = await asyncio.to_thread(paymesh, "merchants", "create", "Process Ltd", "--json")
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    nc = await jetstream.connect([nats_server.url], "replica")
    registry = KeyRegistry(nc, load_pepper({"PAYMESH_KEY_PEPPER": pepper}, tmp_path))
    await registry.start()
    try:
        await wait_for(lambda: refusal(registry, key["api_key"]) is None, timeout=5, message="the key admitted")
        assert registry.lookup(key["api_key"]).merchant_id == key["merchant_id"]
    finally:
        await registry.stop()
        await nc.close()
    listed = await asyncio.to_thread(paymesh, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    assert key["key_id"] in listed.stdout and key["api_key"] not in listed.stdout
    assert not (tmp_path / "operator" / "key_pepper").exists(), "PAYMESH_KEY_PEPPER set: no pepper file made"
    unknown = await asyncio.to_thread(paymesh, "keys", "revoke", "key_nope")
    assert unknown.returncode == 2 and unknown.stderr.strip() == (
        "paymesh: no API key key_nope: `paymesh keys list` shows the keys")
