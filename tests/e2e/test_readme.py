"""The README's grpcurl lines, run against the live mesh through a server-reflection client (what grpcurl
itself does: no proto files), with the metadata each line sends."""

from __future__ import annotations

import asyncio
import re
import shlex
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from paymesh.ops.launcher import Mesh
from paymesh.ops.services import SPECS

pytestmark = pytest.mark.timeout(120)

README = Path(__file__).resolve().parents[2] / "README.md"


def grpcurl_lines() -> list[str]:
    """The `grpcurl` commands of the README's "Talking to it" block, continuation lines joined."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Talking to it"):]
    block = section[section.index("```sh") + 5: section.index("```", section.index("```sh") + 5)]
    joined = re.sub(r"\\\n\s*", " ", block)
    # A JSON body may go on over a line break inside its quotes: join those too.
    commands, pending = [], ""
    for line in joined.splitlines():
        pending = f"{pending} {line.strip()}" if pending else line.strip()
        if pending.count("'") % 2 == 0:
            if pending.startswith("grpcurl "):
                commands.append(pending)
            pending = ""
    return commands


class Reflected:
    """One service address, as grpcurl sees it: a descriptor pool filled from its reflection service."""

    def __init__(self, addr: str) -> None:
        self.channel = grpc.insecure_channel(addr)
        self.database = ProtoReflectionDescriptorDatabase(self.channel)
        self.pool = descriptor_pool.DescriptorPool(self.database)

    def list(self) -> list[str]:
        return sorted(self.database.get_services())

    def call(self, method_path: str, body: str, metadata: list[tuple[str, str]]) -> list[dict[str, Any]]:
        service_name, method_name = method_path.split("/")
        method = self.pool.FindServiceByName(service_name).methods_by_name[method_name]
        request = json_format.Parse(body or "{}", message_factory.GetMessageClass(method.input_type)())
        reply_type = message_factory.GetMessageClass(method.output_type)
        path = f"/{service_name}/{method_name}"
        if method.server_streaming:
            stream = self.channel.unary_stream(path, request_serializer=lambda m: m.SerializeToString(),
                                               response_deserializer=reply_type.FromString)
            return [json_format.MessageToDict(r) for r in stream(request, metadata=metadata, timeout=30)]
        unary = self.channel.unary_unary(path, request_serializer=lambda m: m.SerializeToString(),
                                         response_deserializer=reply_type.FromString)
        return [json_format.MessageToDict(unary(request, metadata=metadata, timeout=30))]

    def close(self) -> None:
        self.channel.close()


def run_line(mesh: Mesh, line: str, state: dict[str, str]) -> list[dict[str, Any]] | list[str]:
    """One README command: the shell substitutions it uses filled in, the default port mapped to the mesh's."""
    line = line.replace("$(uuidgen)", str(uuid.uuid4()))
    line = line.replace("$PAYMESH_API_KEY", state["api_key"])
    line = line.replace("$(cat .paymesh/platform_key)", state["platform_key"])
    line = line.replace("ord_...", state.get("order_id", "ord_..."))
    argv = shlex.split(line)[1:]
    headers, body, rest = [], "", []
    while argv:
        arg = argv.pop(0)
        if arg == "-plaintext":
            continue
        if arg == "-H":
            name, _, value = argv.pop(0).partition(":")
            headers.append((name.strip().lower(), value.strip()))
        elif arg == "-d":
            body = argv.pop(0)
        else:
            rest.append(arg)
    port = int(rest[0].rpartition(":")[2])
    service = next(s.name for s in SPECS if s.grpc_port == port)
    reflected = Reflected(mesh.addr(service))
    try:
        if rest[1] == "list":
            return reflected.list()
        if rest[1] == "describe":
            return [reflected.pool.FindServiceByName(rest[2]).full_name]
        return reflected.call(rest[1], body, headers)
    finally:
        reflected.close()


async def test_the_readme_grpcurl_lines_work_with_the_printed_key(mesh: Mesh) -> None:
    lines = grpcurl_lines()
    assert len(lines) == 8, lines
    assert all("authorization: Bearer" in line for line in lines[3:]), "every call but health and reflection has a key"
    creds = mesh.credentials
    assert creds.api_key is not None and creds.platform_key is not None
    state = {"api_key": creds.api_key.reveal(), "platform_key": creds.platform_key.reveal()}
    listed = await asyncio.to_thread(run_line, mesh, lines[0], state)
    assert "paymesh.order.v1.OrderService" in listed and "grpc.health.v1.Health" in listed
    assert await asyncio.to_thread(run_line, mesh, lines[1], state) == ["paymesh.order.v1.OrderService"]
    assert (await asyncio.to_thread(run_line, mesh, lines[2], state))[0]["status"] == "SERVING"
    product = await asyncio.to_thread(run_line, mesh, lines[3], state)
    assert product[0]["product"]["sku"] == "sku-mug"
    created = await asyncio.to_thread(run_line, mesh, lines[4], state)
    state["order_id"] = created[0]["order"]["orderId"]
    watched = await asyncio.to_thread(run_line, mesh, lines[5], state)
    assert watched[-1]["order"]["status"] == "ORDER_STATUS_CONFIRMED", watched
    payments = await asyncio.to_thread(run_line, mesh, lines[6], state)
    assert payments[0]["payments"][0]["status"] == "PAYMENT_STATUS_SUCCEEDED"
    charges = await asyncio.to_thread(run_line, mesh, lines[7], state)
    assert charges[0]["charges"][0]["orderId"] == state["order_id"]
