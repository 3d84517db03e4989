"""Wires payment_svc onto the chassis: its servicer, its consumers, the gateway client and the refunder."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from payment_svc.api import PaymentApi
from payment_svc.domain import RetryPolicy
from payment_svc.gateway import GatewayClient, GatewayPolicy
from payment_svc.handlers import Recorder, Saga
from payment_svc.refunds import Refunder
from payment_svc.store import PaymentStore, metadata
from paymesh.chassis.service import GrpcService, Runtime, ServiceHost, Wiring
from paymesh.chassis.spec import ServiceSpec
from paymesh.payment.v1 import payment_service_pb2_grpc

SERVICE_NAME = "paymesh.payment.v1.PaymentService"


@dataclass(frozen=True)
class PaymentSettings:
    """What payment_svc alone reads from the environment."""

    # The payment gateway: PAYMENT_SVC_GATEWAY_ADDR, else where gateway_mock listens by default.
    gateway_addr: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> PaymentSettings:
        return cls(
            gateway_addr=env.get("PAYMENT_SVC_GATEWAY_ADDR") or env.get("GATEWAY_MOCK_GRPC_ADDR") or "127.0.0.1:50054"
        )


@dataclass(frozen=True)
class PaymentConfig:
    gateway: GatewayPolicy = field(default_factory=GatewayPolicy)
    # Delay before a charge the gateway has not answered is asked again (RetryLater).
    redelivery: RetryPolicy = RetryPolicy(attempts=0, base_s=0.5, cap_s=5.0)
    charge_concurrency: int = 32
    refund_backoff: RetryPolicy = RetryPolicy(attempts=0, base_s=0.5, cap_s=30.0)
    refund_scan_s: float = 5.0
    # A refund the gateway never received by then fails for good (REFUND_FAILED).
    refund_timeout_s: float = 600.0


class PaymentService:
    """payment_svc's parts (gateway client, refunder, saga handlers, servicer) on the chassis' host."""

    def __init__(self, runtime: Runtime, settings: PaymentSettings, config: PaymentConfig | None = None) -> None:
        config = config or PaymentConfig()
        self.runtime = runtime
        self.store = PaymentStore(runtime.metadata)
        self.gateway = GatewayClient(settings.gateway_addr, config.gateway)
        self.recorder = Recorder(runtime, self.store)
        self.refunder = Refunder(
            runtime,
            self.store,
            self.gateway,
            self.recorder,
            backoff=config.refund_backoff,
            scan_interval_s=config.refund_scan_s,
            refund_timeout_s=config.refund_timeout_s,
        )
        self.recorder.on_refund_requested = self.refunder.kick
        self.saga = Saga(
            runtime,
            self.store,
            self.gateway,
            self.recorder,
            redelivery=config.redelivery,
            concurrency=config.charge_concurrency,
        )
        self.api = PaymentApi(runtime, self.store, self.refunder)
        add = payment_service_pb2_grpc.add_PaymentServiceServicer_to_server
        self.wiring = Wiring(
            services=[GrpcService(SERVICE_NAME, self.api, add)],
            consumers=self.saga.consumers(),
            # The gateway channel serves the consumers' charges: open before them, closed after.
            on_start=[self.gateway.start, self.refunder.start],
            on_stop=[self.refunder.stop, self.gateway.close],
        )
        self.host = ServiceHost(runtime, self.wiring)

    async def start(self) -> None:
        await self.host.start()

    async def stop(self) -> None:
        await self.host.stop()


def wire(runtime: Runtime, settings: PaymentSettings) -> Wiring:
    return PaymentService(runtime, settings).wiring


SPEC = ServiceSpec(
    name="payment_svc",
    env_prefix="PAYMENT_SVC",
    grpc_port=50053,
    stream="PAYMENT",
    metadata=metadata,
    migrations="payment_svc.migrations",
    wire=wire,
    settings=PaymentSettings.from_env,
)
