"""webhook_svc on the chassis: its ServiceSpec, its own settings, and its wiring (servicer, consumers, sender)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from paymesh.chassis.config import ConfigError, env_float, env_int
from paymesh.chassis.service import GrpcService, Runtime, Wiring
from paymesh.chassis.spec import Durable, ServiceSpec
from paymesh.webhook.v1 import webhook_service_pb2_grpc
from webhook_svc.api import WebhookApi
from webhook_svc.domain import DEFAULT_DISABLE_AFTER, DEFAULT_RETENTION, DEFAULT_SCHEDULE_S, parse_schedule
from webhook_svc.handlers import MerchantEvents
from webhook_svc.sender import Sender, SenderPolicy
from webhook_svc.store import WebhookRepository, metadata, tables
from webhook_svc.transport import WebhookTransport

SERVICE_NAME = "paymesh.webhook.v1.WebhookService"
ALLOW_PRIVATE_ENV = "PAYMESH_WEBHOOK_ALLOW_PRIVATE"
SCHEDULE_ENV = "PAYMESH_WEBHOOK_RETRY_SCHEDULE"


def env_flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "false", "0", "no"):
        return False
    if raw in ("true", "1", "yes"):
        return True
    raise ConfigError(f"{name}={raw!r}: use true or false")


@dataclass(frozen=True)
class WebhookSettings:
    """What webhook_svc alone reads from the environment."""

    # PAYMESH_WEBHOOK_ALLOW_PRIVATE=true lets URLs reach loopback, private and link-local addresses, and http:
    # what `paymesh up` sets for local development; off everywhere else (SSRF).
    allow_private: bool = False
    policy: SenderPolicy = SenderPolicy()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WebhookSettings:
        schedule = DEFAULT_SCHEDULE_S
        if raw := env.get(SCHEDULE_ENV, "").strip():
            try:
                schedule = parse_schedule(raw)
            except ValueError as exc:
                raise ConfigError(f"{SCHEDULE_ENV} {exc}") from None
        policy = SenderPolicy(
            schedule=schedule,
            timeout_s=env_float(env, "PAYMESH_WEBHOOK_TIMEOUT_S", 10.0),
            disable_after=timedelta(seconds=env_float(env, "PAYMESH_WEBHOOK_DISABLE_AFTER_S",
                                                      DEFAULT_DISABLE_AFTER.total_seconds())),
            per_endpoint=env_int(env, "PAYMESH_WEBHOOK_ENDPOINT_CONCURRENCY", 4),
            retention=timedelta(days=env_float(env, "PAYMESH_WEBHOOK_EVENT_RETENTION_DAYS",
                                               DEFAULT_RETENTION.days)),
        )
        return cls(allow_private=env_flag(env, ALLOW_PRIVATE_ENV), policy=policy)


def wire(runtime: Runtime, settings: WebhookSettings) -> Wiring:
    repo = WebhookRepository(tables(runtime.metadata))
    transport = WebhookTransport(timeout_s=settings.policy.timeout_s, allow_private=settings.allow_private,
                                 limit_per_host=settings.policy.per_endpoint)
    sender = Sender(runtime.db, repo, transport, settings.policy, service=runtime.settings.service,
                    addr=runtime.settings.grpc_addr, metrics=runtime.metrics)
    events = MerchantEvents(repo, sender.wake, settings.policy.schedule)
    api = WebhookApi(runtime, repo, allow_private=settings.allow_private, wake_sender=sender.wake,
                     schedule=settings.policy.schedule)
    return Wiring(
        services=[GrpcService(SERVICE_NAME, api, webhook_service_pb2_grpc.add_WebhookServiceServicer_to_server)],
        consumers=events.consumers(),
        background=[sender.run, sender.prune],
        on_start=[transport.start],
        on_stop=[sender.stop, transport.close],
    )


SPEC = ServiceSpec(
    name="webhook_svc",
    env_prefix="WEBHOOK_SVC",
    grpc_port=50055,
    stream=None,
    metadata=metadata,
    migrations="webhook_svc.migrations",
    wire=wire,
    settings=WebhookSettings.from_env,
    consumes=(Durable("ORDER", "webhook_svc-order"), Durable("PAYMENT", "webhook_svc-payment")),
)
