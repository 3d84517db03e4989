"""The certificates of `paymesh up --tls` (what they name, who may read them, made once) and the TLS settings a
service reads from its environment."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from paymesh.chassis.config import ConfigError, TlsSettings
from paymesh.chassis.tls import ClientTls, target_options
from paymesh.ops.tls import TOOLS_NAME, ensure_mesh_tls

HOSTS = {"order_svc": "0.0.0.0", "gateway_mock": "10.1.2.3", "payment_svc": "payments.internal"}


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def sans(path: Path) -> set[str]:
    names = cert(path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(n.value) for n in names}


def usages(path: Path) -> set[x509.ObjectIdentifier]:
    return set(cert(path).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_each_service_certificate_names_what_its_clients_dial(tmp_path: Path) -> None:
    made = ensure_mesh_tls(tmp_path, HOSTS)
    loopback = {"localhost", "127.0.0.1", "::1"}
    assert sans(made.services["order_svc"].cert) == loopback | {"order_svc", "order-svc"}  # a wildcard adds nothing
    assert sans(made.services["gateway_mock"].cert) == loopback | {"gateway_mock", "gateway-mock", "10.1.2.3"}
    assert "payments.internal" in sans(made.services["payment_svc"].cert)
    ip_sans = cert(made.services["order_svc"].cert).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("127.0.0.1") in ip_sans, "127.0.0.1 is an IP SAN, as clients dial it"
    for service, pair in made.services.items():
        leaf = cert(pair.cert)
        leaf.verify_directly_issued_by(cert(made.ca))
        assert leaf.subject.rfc4514_string() == f"CN={service}"
        assert usages(pair.cert) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert usages(made.tools.cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert(made.tools.cert).subject.rfc4514_string() == f"CN={TOOLS_NAME}"
    assert cert(made.ca).extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_keys_are_readable_by_their_owner_only_and_certificates_by_anyone(tmp_path: Path) -> None:
    made = ensure_mesh_tls(tmp_path, HOSTS)
    pairs = [*made.services.values(), made.tools]
    for key in [made.ca.with_name("ca.key"), *(p.key for p in pairs)]:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    for pem in [made.ca, *(p.cert for p in pairs)]:
        assert stat.S_IMODE(pem.stat().st_mode) == 0o644, pem
    assert made.ca.parent == tmp_path / "tls"


def test_the_files_are_made_once_and_reused(tmp_path: Path) -> None:
    first = ensure_mesh_tls(tmp_path, HOSTS)
    files = sorted((tmp_path / "tls").iterdir())
    before = {p: p.read_bytes() for p in files}
    again = ensure_mesh_tls(tmp_path, HOSTS)
    assert again == first
    assert {p: p.read_bytes() for p in sorted((tmp_path / "tls").iterdir())} == before


def test_a_certificate_that_no_longer_fits_is_made_again_and_the_rest_kept(tmp_path: Path) -> None:
    first = ensure_mesh_tls(tmp_path, HOSTS)
    kept = {s: cert(p.cert).serial_number for s, p in first.services.items()}
    # The gateway moves to another host: only its certificate is made again.
    ensure_mesh_tls(tmp_path, {**HOSTS, "gateway_mock": "10.9.9.9"})
    now = {s: cert(p.cert).serial_number for s, p in first.services.items()}
    assert now["gateway_mock"] != kept["gateway_mock"] and "10.9.9.9" in sans(first.services["gateway_mock"].cert)
    assert now["order_svc"] == kept["order_svc"]
    # A key that does not match its certificate (a torn write), then a new CA: made again, all of them.
    first.services["order_svc"].key.write_bytes(first.services["payment_svc"].key.read_bytes())
    ensure_mesh_tls(tmp_path, HOSTS)
    assert cert(first.services["order_svc"].cert).serial_number != kept["order_svc"]
    ca_serial = cert(first.ca).serial_number
    first.ca.unlink()
    ensure_mesh_tls(tmp_path, HOSTS)
    assert cert(first.ca).serial_number != ca_serial
    for pair in first.services.values():
        cert(pair.cert).verify_directly_issued_by(cert(first.ca))


def test_tls_settings_read_the_service_and_mesh_variables() -> None:
    env = {"ORDER_SVC_TLS_CERT": "/c.pem", "ORDER_SVC_TLS_KEY": "/k.pem", "PAYMESH_TLS_CA": "/ca.pem",
           "PAYMESH_TLS_CLIENT_AUTH": "require"}
    tls = TlsSettings.from_env("ORDER_SVC", env)
    assert (tls.cert, tls.key, tls.ca, tls.require_client_auth, tls.serves_tls) == (
        Path("/c.pem"), Path("/k.pem"), Path("/ca.pem"), True, True)
    assert not TlsSettings.from_env("ORDER_SVC", {}).serves_tls
    refusals = [
        ({"ORDER_SVC_TLS_CERT": "/c.pem"}, "ORDER_SVC_TLS_KEY"),
        ({"ORDER_SVC_TLS_KEY": "/k.pem"}, "ORDER_SVC_TLS_CERT"),
        ({"PAYMESH_TLS_CLIENT_AUTH": "sometimes"}, "PAYMESH_TLS_CLIENT_AUTH"),
        ({"PAYMESH_TLS_CLIENT_AUTH": "require"}, "ORDER_SVC_TLS_CERT"),
        ({**env, "PAYMESH_TLS_CA": ""}, "PAYMESH_TLS_CA"),
    ]
    for case, variable in refusals:
        with pytest.raises(ConfigError, match=variable):
            TlsSettings.from_env("ORDER_SVC", case)


def test_a_client_picks_tls_from_the_environment(tmp_path: Path) -> None:
    made = ensure_mesh_tls(tmp_path, HOSTS)
    assert ClientTls.from_env({}) is None
    plain = ClientTls.from_env({"PAYMESH_TLS_CA": str(made.ca)})
    assert plain is not None and plain.cert is None
    tools = {"PAYMESH_TLS_CLIENT_CERT": str(made.tools.cert), "PAYMESH_TLS_CLIENT_KEY": str(made.tools.key)}
    mutual = ClientTls.from_env({"PAYMESH_TLS_CA": str(made.ca), **tools})
    assert mutual is not None and mutual.cert == made.tools.cert.read_bytes()
    with pytest.raises(ConfigError, match="PAYMESH_TLS_CA"):
        ClientTls.from_env({"PAYMESH_TLS_CA": str(tmp_path / "none.pem")})
    with pytest.raises(ConfigError, match="PAYMESH_TLS_CLIENT_KEY"):
        ClientTls.from_env({"PAYMESH_TLS_CA": str(made.ca), "PAYMESH_TLS_CLIENT_CERT": str(made.tools.cert)})
    assert "PRIVATE KEY" not in repr(mutual), "the key is never in a repr"


def test_a_target_of_several_addresses_is_verified_against_its_first_host() -> None:
    assert target_options("127.0.0.1:50051") == []
    assert target_options("ipv4:127.0.0.1:50054,127.0.0.1:50154") == [("grpc.ssl_target_name_override", "127.0.0.1")]
    assert target_options("ipv6:[::1]:50054,[::1]:50154") == [("grpc.ssl_target_name_override", "::1")]


def test_a_tls_mesh_gives_each_service_its_certificate_and_prints_the_ca(tmp_path: Path) -> None:
    from paymesh.ops.launcher import Mesh

    env = {"ORDER_SVC_GRPC_ADDR": "0.0.0.0:50051", "PAYMESH_TLS_CLIENT_AUTH": "require"}
    mesh = Mesh(env, tmp_path, tls=True)
    mesh.ensure_tls()
    ca = tmp_path / "tls" / "ca.pem"
    assert mesh.env["PAYMESH_TLS_CA"] == str(ca)
    assert mesh.client_tls is not None and mesh.client_tls.cert == (tmp_path / "tls" / "paymesh-tools.pem").read_bytes()
    child = mesh.replica_env("order_svc", 1)
    assert child["ORDER_SVC_TLS_CERT"] == str(tmp_path / "tls" / "order_svc.pem")
    assert child["ORDER_SVC_TLS_KEY"] == str(tmp_path / "tls" / "order_svc.key")
    assert "PAYMENT_SVC_TLS_CERT" not in child, "a service is given its own certificate only"
    lines = mesh.tls_lines()
    assert f"CA {ca}" in lines[0] and "mTLS" in lines[0]
    assert lines[1].strip().startswith(f"grpcurl -cacert {ca} -cert ") and lines[1].endswith("127.0.0.1:50051 list")
    assert Mesh(env, tmp_path).tls_lines() == [], "no --tls, no TLS lines"
