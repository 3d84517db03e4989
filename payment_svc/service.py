"""payment_svc on the chassis: its ServiceSpec, its own settings, and its wiring (servicer, consumers,
gateway client and refunder)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from payment_svc.api import PaymentApi
from payment_svc.gateway_client import GatewayClient, GatewayPolicy
from payment_svc.handlers import SagaHandlers
from payment_svc.ledger import Ledger
from payment_svc.refunds import Refunder
from payment_svc.store import PaymentRepository, metadata
from paymesh.chassis.auth.keys import ApiKey
from paymesh.chassis.backoff import Backoff
from paymesh.chassis.config import ConfigError
from paymesh.chassis.service import GrpcService, Runtime, Wiring
from paymesh.chassis.spec import Durable, ServiceSpec
from paymesh.chassis.tls import ClientTls
from paymesh.payment.v1 import payment_service_pb2_grpc

SERVICE_NAME = "paymesh.payment.v1.PaymentService"
GATEWAY_API_KEY_ENV = "PAYMENT_SVC_GATEWAY_API_KEY"


@dataclass(frozen=True)
class PaymentSettings:
    """What payment_svc alone reads from the environment, and its policy (tests pass faster clocks)."""

    # The payment gateway: PAYMENT_SVC_GATEWAY_ADDR, else where gateway_mock listens by default.
    gateway_addr: str
    # The platform's own key at the gateway (PAYMENT_SVC_GATEWAY_API_KEY): the bank serves paymesh, not the
    # merchants. An ApiKey, so no repr or log line shows it.
    gateway_api_key: ApiKey
    gateway: GatewayPolicy = GatewayPolicy()
    # Delay before a charge the gateway has not answered is asked again (RetryLater).
    redelivery: Backoff = Backoff(base_s=0.5, cap_s=5.0)
    charge_concurrency: int = 32
    refund_backoff: Backoff = Backoff(base_s=0.5, cap_s=30.0)
    refund_scan_s: float = 5.0
    # A refund the gateway never received by then fails for good (REFUND_FAILED).
    refund_timeout_s: float = 600.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> PaymentSettings:
        secret = env.get(GATEWAY_API_KEY_ENV, "").strip()
        if not secret:
            raise ConfigError(
                f"{GATEWAY_API_KEY_ENV} is not set: payment_svc calls the gateway with the platform's key "
                "(the one the gateway accepts as GATEWAY_MOCK_PLATFORM_KEY); `paymesh up` makes one and gives it "
                "to both"
            )
        return cls(
            gateway_addr=env.get("PAYMENT_SVC_GATEWAY_ADDR") or env.get("GATEWAY_MOCK_GRPC_ADDR") or "127.0.0.1:50054",
            gateway_api_key=ApiKey(secret),
        )


def wire(runtime: Runtime, settings: PaymentSettings) -> Wiring:
    payments = PaymentRepository(runtime.metadata)
    gateway = GatewayClient(settings.gateway_addr, settings.gateway, settings.gateway_api_key,
                            ClientTls.of_service(runtime.settings.tls), telemetry=runtime)
    ledger = Ledger(runtime, payments)
    refunder = Refunder(
        runtime,
        payments,
        gateway,
        ledger,
        backoff=settings.refund_backoff,
        scan_interval_s=settings.refund_scan_s,
        refund_timeout_s=settings.refund_timeout_s,
    )
    ledger.on_refund_requested = refunder.kick
    handlers = SagaHandlers(
        runtime, payments, gateway, ledger, redelivery=settings.redelivery, concurrency=settings.charge_concurrency
    )
    api = PaymentApi(runtime, payments, ledger, refunder)
    return Wiring(
        services=[GrpcService(SERVICE_NAME, api, payment_service_pb2_grpc.add_PaymentServiceServicer_to_server)],
        consumers=handlers.consumers(),
        # Resumes the refunds a crash left REFUNDING, then rescans periodically.
        background=[refunder.scan],
        # The gateway channel serves the consumers' charges: open before them, closed after.
        on_start=[gateway.start],
        on_stop=[refunder.stop, gateway.close],
    )


SPEC = ServiceSpec(
    name="payment_svc",
    env_prefix="PAYMENT_SVC",
    grpc_port=50053,
    stream="PAYMENT",
    metadata=metadata,
    migrations="payment_svc.migrations",
    wire=wire,
    settings=PaymentSettings.from_env,
    consumes=(Durable("ORDER", "payment_svc-order"), Durable("INVENTORY", "payment_svc-inventory")),
)
