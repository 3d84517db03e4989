"""TLS on the gRPC hops: a service's server credentials (its certificate re-read on change or SIGHUP), the one
builder of client channels every caller in the mesh uses, and which peer called under mTLS."""

from __future__ import annotations

import inspect
import logging
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from paymesh.chassis.config import CA_ENV, ConfigError, TlsSettings

log = logging.getLogger(__name__)

# The certificate a tool (paymesh, the health probe, a test) shows under mTLS; a service shows its own.
CLIENT_CERT_ENV = "PAYMESH_TLS_CLIENT_CERT"
CLIENT_KEY_ENV = "PAYMESH_TLS_CLIENT_KEY"
# A peer's name in the auth context: the subject's CN (what `paymesh up --tls` names each service).
PEER_NAME_PROPERTY = "x509_common_name"

ChannelOptions = Sequence[tuple[str, Any]]


def read_pem(path: Path, variable: str) -> bytes:
    """The file `variable` names, or ConfigError naming the variable."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{variable}={path}: cannot read it ({exc.strerror or exc})") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{variable}={path} is not a PEM file")
    return data


def serial_of(cert_pem: bytes, cert_var: str, key_pem: bytes, key_var: str) -> int:
    """The certificate's serial number, once it is known to parse and to belong to the key (ConfigError if not):
    grpc itself would only fail the handshakes."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise ConfigError(f"{cert_var} holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{key_var} holds no unencrypted PEM private key") from None
    if key.public_key() != cert.public_key():
        raise ConfigError(f"{key_var} is not the key of the certificate in {cert_var}")
    return cert.serial_number


@dataclass(frozen=True)
class ServerMaterial:
    key: bytes = field(repr=False)
    cert: bytes
    client_ca: bytes | None
    serial: int


class ServerTls:
    """The server credentials of one service. grpc asks `fetch` before each new handshake: it answers a fresh
    configuration when the files changed (mtime, size or inode) or SIGHUP asked (`request_reload`), else None,
    so a rotated certificate is served on the next connection without a restart. A rotation caught half-written
    (a key that does not match its certificate yet) keeps the old certificate until the files agree."""

    def __init__(self, settings: TlsSettings) -> None:
        if settings.cert is None or settings.key is None:
            raise ValueError("ServerTls needs a certificate and a key")
        self.settings = settings
        self.cert_var, self.key_var = f"{settings.env_prefix}_TLS_CERT", f"{settings.env_prefix}_TLS_KEY"
        self._lock = threading.Lock()  # grpc calls `fetch` from its own threads
        self._reload = False
        self._failed: tuple[Any, ...] | None = None
        self._signature = self.signature()
        self.material = self.load()  # ConfigError naming the variable: the service does not start

    @property
    def paths(self) -> list[tuple[str, Path]]:
        s = self.settings
        assert s.cert is not None and s.key is not None
        named = [(self.cert_var, s.cert), (self.key_var, s.key)]
        return named + [(CA_ENV, s.ca)] if s.require_client_auth and s.ca is not None else named

    def signature(self) -> tuple[Any, ...]:
        out: list[Any] = []
        for _, path in self.paths:
            try:
                st = os.stat(path)
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                out.append(None)
        return tuple(out)

    def load(self) -> ServerMaterial:
        s = self.settings
        assert s.cert is not None and s.key is not None
        cert, key = read_pem(s.cert, self.cert_var), read_pem(s.key, self.key_var)
        serial = serial_of(cert, self.cert_var, key, self.key_var)
        ca = read_pem(s.ca, CA_ENV) if s.require_client_auth and s.ca is not None else None
        return ServerMaterial(key, cert, ca, serial)

    def configuration(self, material: ServerMaterial) -> Any:  # grpc.ServerCertificateConfiguration, untyped stubs
        return grpc.ssl_server_certificate_configuration([(material.key, material.cert)], material.client_ca)

    def credentials(self) -> grpc.ServerCredentials:
        """New credentials for one port (grpc takes each credentials object for one binding only)."""
        return grpc.dynamic_ssl_server_credentials(
            self.configuration(self.material), self.fetch, self.settings.require_client_auth
        )

    def request_reload(self) -> None:
        """Read the files again before the next handshake, changed or not (SIGHUP)."""
        with self._lock:
            self._reload = True

    def fetch(self) -> Any:
        """A new configuration if the files changed or a reload was asked, else None (keep the current one)."""
        try:
            with self._lock:
                signature = self.signature()
                if not self._reload and signature == self._signature:
                    return None
                if not self._reload and signature == self._failed:
                    return None  # still the files that failed: said once
                try:
                    material = self.load()
                except ConfigError as exc:
                    self._failed, self._reload = signature, False
                    log.warning("TLS files changed but cannot be served (%s): keeping certificate serial %x",
                                exc, self.material.serial)
                    return None
                self._signature, self._reload, self._failed = signature, False, None
                if material == self.material:
                    return None
                self.material = material
            log.info("TLS certificate reloaded from %s: serial %x", self.settings.cert, material.serial)
            return self.configuration(material)
        except Exception:  # an exception here would fail the handshake inside grpc
            log.exception("TLS reload failed: keeping the current certificate")
            return None


@dataclass(frozen=True)
class ClientTls:
    """What a client dials TLS with: the CA it verifies servers against, and the certificate it shows (mTLS)."""

    ca: bytes
    cert: bytes | None = None
    key: bytes | None = field(default=None, repr=False)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.ca, self.key, self.cert)

    @classmethod
    def load(cls, ca: Path, cert: tuple[str, Path] | None = None, key: tuple[str, Path] | None = None
             ) -> ClientTls:
        ca_pem = read_pem(ca, CA_ENV)
        if cert is None or key is None:
            return cls(ca_pem)
        cert_pem, key_pem = read_pem(cert[1], cert[0]), read_pem(key[1], key[0])
        serial_of(cert_pem, cert[0], key_pem, key[0])
        return cls(ca_pem, cert_pem, key_pem)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, own_prefix: str | None = None) -> ClientTls | None:
        """TLS when PAYMESH_TLS_CA is set (else None: plaintext). The client certificate: PAYMESH_TLS_CLIENT_CERT
        and _KEY, else `<own_prefix>_TLS_CERT` and _KEY (a service, or the probe inside its container)."""
        env = os.environ if env is None else env
        ca = env.get(CA_ENV)
        if not ca:
            return None
        for cert_var, key_var in [(CLIENT_CERT_ENV, CLIENT_KEY_ENV)] + (
            [(f"{own_prefix}_TLS_CERT", f"{own_prefix}_TLS_KEY")] if own_prefix else []
        ):
            cert, key = env.get(cert_var), env.get(key_var)
            if cert and key:
                return cls.load(Path(ca), (cert_var, Path(cert)), (key_var, Path(key)))
            if cert or key:
                raise ConfigError(f"{cert_var} and {key_var} go together: set both or neither")
        return cls.load(Path(ca))

    @classmethod
    def of_service(cls, settings: TlsSettings) -> ClientTls | None:
        """A service calling another: trusts PAYMESH_TLS_CA and shows its own certificate."""
        if settings.ca is None:
            return None
        if settings.cert is None or settings.key is None:
            return cls.load(settings.ca)
        p = settings.env_prefix
        return cls.load(settings.ca, (f"{p}_TLS_CERT", settings.cert), (f"{p}_TLS_KEY", settings.key))


def target_options(target: str) -> list[tuple[str, Any]]:
    """A target naming several addresses (`ipv4:a,b`) has no host to verify: the first address's host is the
    name checked against the certificate's SANs (each replica's certificate names the same loopback hosts)."""
    scheme, sep, rest = target.partition(":")
    if not sep or scheme not in ("ipv4", "ipv6"):
        return []
    first = rest.split(",")[0]
    host = first.rpartition(":")[0].removeprefix("[").removesuffix("]")
    return [("grpc.ssl_target_name_override", host)]


def channel(target: str, tls: ClientTls | None, *, options: ChannelOptions = (),
            interceptors: Sequence[Any] | None = None) -> grpc.aio.Channel:
    """A grpc.aio channel to `target`: TLS verified against `tls.ca` when given, else plaintext."""
    if tls is None:
        return grpc.aio.insecure_channel(target, options=list(options), interceptors=interceptors)
    return grpc.aio.secure_channel(target, tls.credentials(), options=[*options, *target_options(target)],
                                   interceptors=interceptors)


def blocking_channel(target: str, tls: ClientTls | None, *, options: ChannelOptions = ()) -> grpc.Channel:
    """The same, for a synchronous client (the container health probe)."""
    if tls is None:
        return grpc.insecure_channel(target, options=list(options))
    return grpc.secure_channel(target, tls.credentials(), options=[*options, *target_options(target)])


# The calling service or tool, as its client certificate names it; set per call by PeerInterceptor.
_peer: ContextVar[str | None] = ContextVar("paymesh_peer", default=None)


def current_peer() -> str | None:
    """The CN of the client certificate of the call being served (`payment_svc`, `paymesh-tools`); None
    without mTLS."""
    return _peer.get()


def peer_name(context: Any) -> str | None:
    """The CN of the peer's verified certificate in the call's auth context, else None."""
    names = context.auth_context().get(PEER_NAME_PROPERTY) or []
    return names[0].decode(errors="replace") if names else None


Handler = Any  # grpc.RpcMethodHandler, generic only in grpc-stubs


class PeerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # generic only in grpc-stubs
    """Under mTLS, makes the caller's certificate name `current_peer()` for the handler, and logs it at DEBUG."""

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]], details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def call(request: Any, context: Any) -> Any:
                _peer.set(named(context, method))
                return await unary(request, context)

            return grpc.unary_unary_rpc_method_handler(call, request_deserializer=handler.request_deserializer,
                                                       response_serializer=handler.response_serializer)
        if handler.unary_stream is not None:
            stream = handler.unary_stream

            async def call_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                _peer.set(named(context, method))
                async for reply in stream(request, context):
                    yield reply

            async def call_writer(request: Any, context: Any) -> None:  # one that sends with context.write
                _peer.set(named(context, method))
                await stream(request, context)

            wrapped = call_stream if inspect.isasyncgenfunction(stream) else call_writer
            return grpc.unary_stream_rpc_method_handler(wrapped,
                                                        request_deserializer=handler.request_deserializer,
                                                        response_serializer=handler.response_serializer)
        return handler


def named(context: Any, method: str) -> str | None:
    peer = peer_name(context)
    log.debug("%s called by %s", method, peer)
    return peer
