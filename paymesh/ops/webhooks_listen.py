"""`paymesh webhooks listen`, as `stripe listen`: a local receiver of the development merchant's webhooks, each
delivery verified and printed as it arrives, its endpoint deleted on exit. `WebhookReceiver` and `registered`
are the receiver `paymesh demo` and `paymesh bench --webhook` run in their own process too."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import grpc
from aiohttp import web
from google.protobuf.timestamp_pb2 import Timestamp

from paymesh.chassis.config import grpc_addr
from paymesh.client import MeshClient
from paymesh.ops.addresses import dial_addr
from paymesh.ops.credentials import API_KEY_ENV, DEV_KEY_FILE, MeshCredentials
from paymesh.ops.launcher import LaunchError, wait_serving
from paymesh.ops.services import spec
from paymesh.webhook.v1 import webhook_pb2
from paymesh.webhook.v1 import webhook_service_pb2 as wpb
from webhook_svc.service import ALLOW_PRIVATE_ENV
from webhook_svc.signing import InvalidSignature, verify

if TYPE_CHECKING:
    from paymesh.webhook.v1.webhook_service_pb2_grpc import WebhookServiceAsyncStub

ALL_EVENTS = ("*",)
HOST = "127.0.0.1"
PROBE_TIMEOUT_S = 3.0
# A delivery arriving before CreateEndpoint's answer (the secret) waits this long for it, then is refused.
SECRET_WAIT_S = 10.0


def _created(raw: Any) -> datetime | None:
    """The body's `created` (protobuf's JSON timestamp) as a UTC datetime; None when absent or malformed."""
    if not isinstance(raw, str):
        return None
    stamp = Timestamp()
    try:
        stamp.FromJsonString(raw)
    except ValueError:
        return None
    return stamp.ToDatetime(tzinfo=UTC)


@dataclass(frozen=True)
class Received:
    """One POST the receiver got, what it says, and whether its signature verified (400 answered if not)."""

    webhook_id: str
    type: str
    order_id: str
    sequence: int
    created: datetime | None  # the event's own time (the saga step's occurred_at)
    received_at: datetime  # wall clock, UTC
    received_perf: float  # time.perf_counter(): the clock `paymesh bench` times its sagas with
    verified: bool
    refusal: str = ""  # why it did not verify

    @classmethod
    def of(cls, headers: Mapping[str, str], body: bytes, secret: str | None) -> Received:
        received_at, received_perf = datetime.now(UTC), time.perf_counter()
        refusal = ""
        try:
            if secret is None:
                raise InvalidSignature("the endpoint's secret was not known yet")
            verify(secret, headers, body)
        except InvalidSignature as exc:
            refusal = str(exc)
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        payload = payload if isinstance(payload, dict) else {}
        data = payload.get("data")
        obj = data.get("object") if isinstance(data, dict) else None
        order_id = obj.get("orderId") if isinstance(obj, dict) else None
        sequence = payload.get("sequence")
        return cls(
            webhook_id=headers.get("webhook-id", ""),
            type=str(payload.get("type", "")),
            order_id=order_id if isinstance(order_id, str) else "",
            sequence=sequence if isinstance(sequence, int) else 0,
            created=_created(payload.get("created")),
            received_at=received_at,
            received_perf=received_perf,
            verified=not refusal,
            refusal=refusal,
        )

    @property
    def latency_ms(self) -> float | None:
        """From the event's `created` to its arrival here (both clocks of this machine, for a local mesh)."""
        if self.created is None:
            return None
        return round((self.received_at - self.created).total_seconds() * 1000, 1)

    @property
    def signature(self) -> str:
        return "verified" if self.verified else "BAD SIGNATURE"

    def line(self) -> str:
        local = self.received_at.astimezone().strftime("%H:%M:%S.%f")[:-3]
        latency = f"{self.latency_ms:7.1f} ms" if self.latency_ms is not None else "      ? ms"
        why = f" ({self.refusal}; answered 400)" if self.refusal else ""
        return (f"{local}  {self.type or '?':<22} {self.order_id or '-':<36} seq {self.sequence:<3} "
                f"latency {latency}  {self.signature}{why}  {self.webhook_id}")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "received": self.received_at.isoformat().replace("+00:00", "Z"),
            "id": self.webhook_id, "type": self.type, "order_id": self.order_id, "sequence": self.sequence,
            "created": self.created.isoformat().replace("+00:00", "Z") if self.created is not None else None,
            "latency_ms": self.latency_ms, "verified": self.verified, "status": 200 if self.verified else 400,
        }
        if self.refusal:
            out["error"] = self.refusal
        return out


class WebhookReceiver:
    """An aiohttp.web server on 127.0.0.1 taking every POST as a delivery: verified with the secret `trust` gave,
    answered 200 when it verifies and 400 when it does not, kept in `received` (retries too: dedupe by
    `webhook_id`), each passed to `on_arrival` as it comes."""

    def __init__(self, on_arrival: Callable[[Received], None] | None = None) -> None:
        self.on_arrival = on_arrival
        self.received: list[Received] = []
        self.url = ""
        self._secret: str | None = None
        self._trusted = asyncio.Event()
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    async def start(self, port: int = 0) -> str:
        """Serve on `port` (0: any free one); the URL to register."""
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, HOST, port).start()
        self.url = f"http://{HOST}:{self._runner.addresses[0][1]}/"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def trust(self, secret: str) -> None:
        self._secret = secret
        self._trusted.set()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        with contextlib.suppress(TimeoutError):  # the endpoint was made, its answer not read yet
            await asyncio.wait_for(self._trusted.wait(), SECRET_WAIT_S)
        got = Received.of({k.lower(): v for k, v in request.headers.items()}, body, self._secret)
        async with self._arrived:
            self.received.append(got)
            self._arrived.notify_all()
        if self.on_arrival is not None:
            self.on_arrival(got)
        return web.Response(status=200) if got.verified else web.Response(status=400, text=got.refusal)

    async def wait_for(self, accept: Callable[[list[Received]], bool], timeout: float) -> bool:
        """Until `accept(received)` holds (True), or `timeout` seconds (False)."""
        async with self._arrived:
            try:
                await asyncio.wait_for(self._arrived.wait_for(lambda: accept(self.received)), timeout)
            except TimeoutError:
                return False
        return True


def webhook_stub(client: MeshClient) -> WebhookServiceAsyncStub:
    # MeshClient.webhook is annotated with the generated stub's sync face; made on the client's aio channel it
    # is the async stub (the generated __new__ overload), whose calls are awaited here.
    return cast("WebhookServiceAsyncStub", client.webhook)


async def create_endpoint(
    client: MeshClient, receiver: WebhookReceiver, events: Sequence[str], description: str
) -> webhook_pb2.Endpoint:
    """An endpoint of the client's merchant for `receiver` (started), which verifies with its secret from then on."""
    request = wpb.CreateEndpointRequest(request_id=str(uuid.uuid4()), url=receiver.url,
                                        enabled_events=list(events), description=description)
    reply: wpb.CreateEndpointResponse = await client.call(webhook_stub(client).CreateEndpoint, request)
    receiver.trust(reply.secret)
    return reply.endpoint


async def delete_endpoint(client: MeshClient, endpoint_id: str) -> None:
    request = wpb.DeleteEndpointRequest(request_id=str(uuid.uuid4()), endpoint_id=endpoint_id)
    await client.call(webhook_stub(client).DeleteEndpoint, request)


@contextlib.asynccontextmanager
async def registered(
    client: MeshClient, receiver: WebhookReceiver, events: Sequence[str], description: str
) -> AsyncIterator[webhook_pb2.Endpoint]:
    """`create_endpoint`, deleted on leaving however that happens. gRPC refusals are the caller's to explain."""
    endpoint = await create_endpoint(client, receiver, events, description)
    try:
        yield endpoint
    finally:
        await delete_endpoint(client, endpoint.endpoint_id)


def refused(err: grpc.aio.AioRpcError) -> str:
    return f"{err.code().name}: {err.details()}"


def url_refusal_hint(err: grpc.aio.AioRpcError) -> str:
    """What to do when webhook_svc refused a local receiver's URL (its SSRF guard); "" for any other refusal."""
    if err.code() != grpc.StatusCode.INVALID_ARGUMENT or "url" not in (err.details() or ""):
        return ""
    return f"; webhook_svc must allow webhooks to this machine ({ALLOW_PRIVATE_ENV}=true, as `paymesh up` sets it)"


def err_line(text: str) -> None:
    print(f"paymesh webhooks listen: {text}", file=sys.stderr, flush=True)


async def listen(env: Mapping[str, str], data_dir: Path, events: Sequence[str], port: int, as_json: bool) -> int:
    addr = dial_addr(grpc_addr(spec("webhook_svc"), env))
    keys = MeshCredentials.load(env, data_dir)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            await wait_serving("webhook_svc", addr, keys.tls)
    except (TimeoutError, LaunchError):
        err_line(f"no mesh running: webhook_svc does not answer at {addr} (start one with `paymesh up`, or name "
                 "it with WEBHOOK_SVC_GRPC_ADDR)")
        return 2
    if keys.api_key is None:
        err_line(f"no API key: set {API_KEY_ENV}, or name the data dir of `paymesh up` with --data-dir (it keeps "
                 f"the development merchant's key in {data_dir / DEV_KEY_FILE})")
        return 2

    def show(got: Received) -> None:
        print(json.dumps(got.to_json()) if as_json else got.line(), flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    stopping = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def on_signal(signum: int) -> None:
        if not stop.is_set():
            print(f"{signal.Signals(signum).name}: deleting the endpoint and stopping", file=sys.stderr, flush=True)
        stop.set()

    for signum in stopping:
        loop.add_signal_handler(signum, on_signal, signum)
    receiver = WebhookReceiver(on_arrival=show)
    endpoint_id = ""
    try:
        await receiver.start(port)
        async with MeshClient.from_env(env, **keys.client_options()) as client:
            async with registered(client, receiver, events, "paymesh webhooks listen") as endpoint:
                endpoint_id = endpoint.endpoint_id
                if as_json:
                    print(json.dumps({"listening": receiver.url, "endpoint_id": endpoint_id,
                                      "enabled_events": list(endpoint.enabled_events)}), flush=True)
                else:
                    print(f"listening on {receiver.url} as webhook endpoint {endpoint_id} (events: "
                          f"{', '.join(endpoint.enabled_events)}); Ctrl-C deletes it and stops", flush=True)
                await stop.wait()
        print(json.dumps({"deleted": endpoint_id}) if as_json else f"webhook endpoint {endpoint_id} deleted",
              flush=True)
        return 0
    except OSError as exc:
        err_line(f"cannot serve on {HOST}:{port}: {exc.strerror or exc}")
        return 1
    except grpc.aio.AioRpcError as err:
        if endpoint_id:
            err_line(f"could not delete webhook endpoint {endpoint_id} ({refused(err)}): webhook_svc keeps trying to "
                     "deliver to it until it is deleted (DeleteEndpoint)")
        else:
            err_line(f"webhook_svc refused to register an endpoint at {receiver.url} ({refused(err)})"
                     + url_refusal_hint(err))
        return 1
    finally:
        await receiver.stop()
        for signum in stopping:
            loop.remove_signal_handler(signum)


def main(env: Mapping[str, str], data_dir: str | None, events: str, port: int, as_json: bool) -> int:
    resolved = Path(data_dir or env.get("PAYMESH_DATA_DIR") or ".paymesh").resolve()
    wanted = [name.strip() for name in events.split(",") if name.strip()]
    if not wanted:
        err_line("--events names no event type: give types separated by commas (order.confirmed,...) or *")
        return 2
    try:
        return asyncio.run(listen(env, resolved, wanted, port, as_json))
    except KeyboardInterrupt:  # Ctrl-C before the endpoint was made (its handler comes with it): nothing to delete
        return 130
