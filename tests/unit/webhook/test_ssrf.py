"""The SSRF guard's rules: which addresses are refused, which URLs are refused at registration, and lookups."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

import pytest

from webhook_svc import ssrf


@pytest.mark.parametrize(("address", "reason"), [
    ("127.0.0.1", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.0.1", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "metadata"),
    ("169.254.1.1", "link-local"),
    ("fd00:ec2::254", "metadata"),
    ("::1", "loopback"),
    ("fe80::1", "link-local"),
    ("fe80::1%1", "link-local"),
    ("fc00::1", "private"),
    ("fec0::1", "private"),
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.1.2.3", "private"),
    ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
    ("64:ff9b::a9fe:a9fe", "metadata"),  # NAT64 of 169.254.169.254
    ("100.64.0.1", "shared"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("93.184.216.34", None),
    ("2606:4700::1111", None),
    ("::ffff:93.184.216.34", None),
    ("64:ff9b::5db8:d822", None),  # NAT64 of 93.184.216.34
])
def test_refused_reason(address: str, reason: str | None) -> None:
    assert ssrf.refused_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize(("url", "message"), [
    ("ftp://example.com/hook", "must use https, not ftp"),
    ("example.com/hook", "must be absolute"),
    ("http://example.com/hook", "must be https"),
    ("https:///hook", "has no host"),
    ("https://user:pass@example.com/hook", "must not contain credentials"),
    ("https://user@example.com/hook", "must not contain credentials"),
    ("https://example.com/hook#part", "must not have a fragment"),
    ("https://example.com/" + "a" * 2048, "at most 2048"),
    ("https://example.com/a b", "spaces or control characters"),
    ("https://example.com:99999/", "cannot be parsed"),
    ("https://127.0.0.1/hook", "127.0.0.1 is a loopback address"),
    ("https://10.0.0.7:8443/hook", "10.0.0.7 is a private address"),
    ("https://[::1]/hook", "is a loopback address"),
    ("https://169.254.169.254/latest/meta-data", "metadata address"),
    ("https://[::ffff:127.0.0.1]/hook", "loopback"),
    ("https://127.1/hook", "not a canonical IPv4 address"),
    ("https://2130706433/hook", "not a canonical IPv4 address"),
    ("https://0x7f.0.0.1/hook", "not a canonical IPv4 address"),
    ("https://localhost/hook", "is this machine"),
    ("https://api.localhost/hook", "is this machine"),
])
def test_check_url_refuses(url: str, message: str) -> None:
    with pytest.raises(ssrf.InvalidUrl) as refused:
        ssrf.check_url(url, allow_private=False)
    assert message in str(refused.value)


def test_a_refusal_never_repeats_the_credentials() -> None:
    with pytest.raises(ssrf.InvalidUrl) as refused:
        ssrf.check_url("https://merchant:hunter2secret@example.com/hook", allow_private=False)
    assert "hunter2secret" not in str(refused.value)


def test_refused_addresses_name_the_setting_that_allows_them() -> None:
    with pytest.raises(ssrf.InvalidUrl) as refused:
        ssrf.check_url("https://192.168.1.1/hook", allow_private=False)
    assert "PAYMESH_WEBHOOK_ALLOW_PRIVATE=true" in str(refused.value)


@pytest.mark.parametrize("url", [
    "https://example.com/hook",
    "https://example.com:8443/hooks/paymesh?merchant=1",
    "https://93.184.216.34/hook",
    "https://[2606:4700::1111]/hook",
])
def test_check_url_accepts_public_https(url: str) -> None:
    ssrf.check_url(url, allow_private=False)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/hook", "http://localhost:9000/", "https://10.0.0.7/hook"])
def test_allow_private_accepts_local_development_urls(url: str) -> None:
    ssrf.check_url(url, allow_private=True)


def test_allow_private_still_refuses_what_is_not_an_address_question() -> None:
    for url, message in [("https://u:p@localhost/", "credentials"), ("ftp://localhost/", "must use https"),
                         ("http://localhost/#x", "fragment")]:
        with pytest.raises(ssrf.InvalidUrl, match=message):
            ssrf.check_url(url, allow_private=True)


async def test_localhost_resolves_to_loopback_and_is_refused() -> None:
    with pytest.raises(ssrf.RefusedAddress) as refused:
        await ssrf.resolve_checked("localhost", 443, allow_private=False)
    text = str(refused.value)
    assert "webhook URL host localhost resolves to" in text and "a loopback address" in text
    assert refused.value.reason == "loopback"


async def test_localhost_is_allowed_when_private_is() -> None:
    addresses = await ssrf.resolve_checked("localhost", 443, allow_private=True)
    assert addresses and all(ipaddress.ip_address(a).is_loopback for a in addresses)


async def test_an_unknown_host_is_unresolvable_not_refused() -> None:
    with pytest.raises(ssrf.UnresolvableHost, match="cannot resolve host no-such-host.invalid"):
        await ssrf.resolve_checked("no-such-host.invalid", 443, allow_private=False)


def _fake_getaddrinfo(*addresses: str) -> Any:
    async def getaddrinfo(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        infos: list[tuple[Any, ...]] = []
        for address in addresses:
            if ":" in address:
                infos.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0)))
            else:
                infos.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)))
        return infos
    return getaddrinfo


async def test_one_private_address_among_public_ones_refuses_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "getaddrinfo", _fake_getaddrinfo("93.184.216.34", "10.0.0.5", "2606:4700::1111"))
    with pytest.raises(ssrf.RefusedAddress, match="resolves to 10.0.0.5, a private address"):
        await ssrf.resolve_checked("rebind.example", 443, allow_private=False)
    resolver = ssrf.GuardedResolver(allow_private=False)
    with pytest.raises(ssrf.RefusedAddress):
        await resolver.resolve("rebind.example", 443, family=socket.AF_UNSPEC)


async def test_the_resolver_hands_aiohttp_numeric_checked_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "getaddrinfo", _fake_getaddrinfo("93.184.216.34", "2606:4700::1111"))
    resolver = ssrf.GuardedResolver(allow_private=False)
    results = await resolver.resolve("public.example", 8443, family=socket.AF_UNSPEC)
    assert [(r["hostname"], r["host"], r["port"], r["family"]) for r in results] == [
        ("public.example", "93.184.216.34", 8443, socket.AF_INET),
        ("public.example", "2606:4700::1111", 8443, socket.AF_INET6),
    ]
    assert all(r["flags"] & socket.AI_NUMERICHOST for r in results)
    await resolver.close()


async def test_the_resolver_checks_literal_addresses_too() -> None:
    with pytest.raises(ssrf.RefusedAddress, match="a loopback address"):
        await ssrf.GuardedResolver(allow_private=False).resolve("127.0.0.1", 80)
    results = await ssrf.GuardedResolver(allow_private=True).resolve("127.0.0.1", 80)
    assert [r["host"] for r in results] == ["127.0.0.1"]


def test_literal_hosts_are_checked_as_aiohttp_reads_them() -> None:
    for host in ("127.0.0.1", "::1", "::ffff:7f00:1", "fe80::1%25eth0", "2130706433"):
        with pytest.raises(ssrf.RefusedAddress):
            ssrf.check_literal_host(host, allow_private=False)
        ssrf.check_literal_host(host, allow_private=True)
    ssrf.check_literal_host("93.184.216.34", allow_private=False)
    ssrf.check_literal_host("example.com", allow_private=False)  # a name: the resolver's to check


async def test_the_connector_uses_the_guard_and_no_dns_cache() -> None:
    connector = ssrf.connector(allow_private=False, limit_per_host=3)
    try:
        assert not connector.use_dns_cache
        assert connector.limit_per_host == 3
    finally:
        await connector.close()
