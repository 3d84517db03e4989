"""The local certificate authority of `paymesh up --tls`: a CA, a certificate per service and one for the tools,
under `<data dir>/tls/`, made once and reused while they are valid (keys mode 0600).

Each service's certificate names what its clients dial (127.0.0.1, ::1, localhost, its name as a compose host
such as `order-svc`, and its listen host) and serves as its client certificate under mTLS too; the tools'
(`paymesh-tools`) is a client certificate only. EC P-256 throughout.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from paymesh.ops.addresses import IPV4_WILDCARDS, IPV6_WILDCARDS
from paymesh.ops.credentials import write_private

TLS_DIR = "tls"
CA_NAME = "paymesh local CA"
TOOLS_NAME = "paymesh-tools"
CA_VALIDITY = datetime.timedelta(days=3650)
LEAF_VALIDITY = datetime.timedelta(days=397)
# A certificate this close to its end is made again rather than reused.
RENEW_WITHIN = datetime.timedelta(days=30)
# Every service certificate covers loopback of both families and the name a local client dials.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")

Name = x509.DNSName | x509.IPAddress


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class MeshTls:
    """Where the mesh's TLS files are: the CA every client trusts, each service's pair, the tools' pair."""

    ca: Path
    services: dict[str, CertPair]
    tools: CertPair


def san_names(hosts: Iterable[str]) -> set[Name]:
    """The SAN entries for hosts: an IP address as an IP SAN, anything else as a DNS name; wildcards left out."""
    names: set[Name] = set()
    for host in hosts:
        if host in IPV4_WILDCARDS | IPV6_WILDCARDS:
            continue
        try:
            names.add(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.add(x509.DNSName(host))
    return names


def service_hosts(service: str, listen_host: str = "") -> list[str]:
    """What a client may dial for `service`: loopback, its name (`order_svc`, and `order-svc` as compose names
    hosts) and the host it listens on."""
    return [*LOOPBACK_NAMES, service, service.replace("_", "-"), listen_host]


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def write_public(path: Path, data: bytes) -> None:
    """Written whole beside `path` (mode 0644), then renamed into place."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def read_pair(pair: CertPair) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The certificate and its key, or None when either is missing, unreadable or they do not match."""
    try:
        cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
        key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        return None
    return cert, key


def fresh(cert: x509.Certificate) -> bool:
    return cert.not_valid_before_utc <= now() and cert.not_valid_after_utc - RENEW_WITHIN > now()


def builder(subject: str, issuer: x509.Name, public: ec.EllipticCurvePublicKey,
            validity: datetime.timedelta) -> x509.CertificateBuilder:
    start = now() - datetime.timedelta(minutes=5)  # a clock a little behind still accepts it
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + validity)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )


def ensure_ca(directory: Path) -> tuple[CertPair, x509.Certificate, ec.EllipticCurvePrivateKey, bool]:
    """The kept CA if it is whole and fresh, else a new one; True when made now."""
    pair = CertPair(directory / "ca.pem", directory / "ca.key")
    kept = read_pair(pair)
    if kept is not None and fresh(kept[0]):
        return pair, kept[0], kept[1], False
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    cert = (
        builder(CA_NAME, name, key.public_key(), CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    write_private(pair.key, key_pem(key))
    write_public(pair.cert, cert.public_bytes(serialization.Encoding.PEM))
    return pair, cert, key, True


def leaf_is_current(pair: CertPair, ca: x509.Certificate, names: set[Name]) -> bool:
    """The kept pair matches, is fresh, was issued by `ca` and names at least `names`."""
    kept = read_pair(pair)
    if kept is None or not fresh(kept[0]):
        return False
    cert = kept[0]
    try:
        cert.verify_directly_issued_by(ca)
        present = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except (ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return False
    return names <= present


def issue(pair: CertPair, common_name: str, names: set[Name], server: bool,
          ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server else [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = (
        builder(common_name, ca.subject, key.public_key(), LEAF_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(sorted(names, key=str)), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    # The key first: a pair read between the two writes does not match, and is made again.
    write_private(pair.key, key_pem(key))
    write_public(pair.cert, cert.public_bytes(serialization.Encoding.PEM))


def ensure_mesh_tls(data_dir: Path, listen_hosts: Mapping[str, str]) -> MeshTls:
    """The mesh's CA and certificates under `data_dir/tls`: kept ones reused, missing, stale or foreign ones made.
    `listen_hosts`: each service and the host it listens on (a wildcard adds nothing)."""
    directory = data_dir / TLS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    ca_pair, ca, ca_key, _ = ensure_ca(directory)
    services: dict[str, CertPair] = {}
    for service, host in listen_hosts.items():
        pair = CertPair(directory / f"{service}.pem", directory / f"{service}.key")
        names = san_names(service_hosts(service, host))
        if not leaf_is_current(pair, ca, names):
            issue(pair, service, names, True, ca, ca_key)
        services[service] = pair
    tools = CertPair(directory / f"{TOOLS_NAME}.pem", directory / f"{TOOLS_NAME}.key")
    tool_names = san_names([TOOLS_NAME])
    if not leaf_is_current(tools, ca, tool_names):
        issue(tools, TOOLS_NAME, tool_names, False, ca, ca_key)
    return MeshTls(ca=ca_pair.cert, services=services, tools=tools)


def main(argv: list[str] | None = None) -> int:
    """`python -m paymesh.ops.tls --data-dir DIR`: the mesh's CA and certificates under DIR/tls, for a deployment
    whose services do not run under `paymesh up` (docker-compose's tls-setup job); each service's certificate
    names loopback and its own host names (`order-svc`, ...)."""
    import argparse

    from paymesh.ops.services import NAMES

    parser = argparse.ArgumentParser(prog="python -m paymesh.ops.tls", description=main.__doc__)
    parser.add_argument("--data-dir", required=True, help="the certificates go to DATA_DIR/tls")
    made = ensure_mesh_tls(Path(parser.parse_args(argv).data_dir), dict.fromkeys(NAMES, ""))
    print(f"CA {made.ca}; certificates of {', '.join(sorted(made.services))} and {TOOLS_NAME}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
