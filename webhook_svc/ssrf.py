"""No webhook request to private addresses (SSRF guard): URL checks at registration, address checks at connect."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOW_PRIVATE_ENV = "PAYMESH_WEBHOOK_ALLOW_PRIVATE"
MAX_URL_LENGTH = 2048

_METADATA = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_REFUSED_CLASSES = "private, loopback, link-local and metadata addresses are refused"
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")
# What the WHATWG URL parser (and glibc's inet_aton) would read as an IPv4 address in some legacy form.
_NUMERIC_LABEL = re.compile(r"(?:[0-9]+|0[xX][0-9a-fA-F]*)")

_NUMERIC_HOST = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
_NAME_INFO = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
_AI_ADDRCONFIG = socket.AI_ADDRCONFIG
if hasattr(socket, "AI_MASK"):
    _AI_ADDRCONFIG &= socket.AI_MASK


class InvalidUrl(Exception):
    """A webhook URL refused at registration; the message says what to change and never repeats the URL."""


class RefusedAddress(Exception):
    """A webhook URL's host is, or resolves to, an address a delivery must not reach."""

    def __init__(self, host: str, address: str, reason: str) -> None:
        self.host = host
        self.address = address
        self.reason = reason
        article = "an" if reason[:1] in "aeiou" else "a"
        what = "shared (carrier-grade NAT)" if reason == "shared" else reason
        where = "is" if address == host else f"resolves to {address},"
        super().__init__(f"webhook URL host {host} {where} {article} {what} address; {_REFUSED_CLASSES} "
                         f"unless {ALLOW_PRIVATE_ENV}=true")


class UnresolvableHost(Exception):
    """DNS gave no address for the host: retried like any network error, not a refusal."""

    def __init__(self, host: str, detail: str = "") -> None:
        self.host = host
        super().__init__(f"cannot resolve host {host}" + (f" ({detail})" if detail else ""))


def refused_reason(ip: IPAddress) -> str | None:
    """Why a delivery may not connect to `ip`, or None for a public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        # A scoped address (fe80::1%eth0) compares unequal to the unscoped one; judge the address alone.
        ip = ipaddress.IPv6Address(int(ip))
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            # These reach the IPv4 address they carry (directly, or through a 6to4/NAT64 gateway).
            return refused_reason(embedded)
    if ip in _METADATA:
        return "metadata"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED:
        return "shared"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local):
        return "private"
    if not ip.is_global:
        return "reserved"
    return None


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def check_address(host: str, address: str, *, allow_private: bool) -> None:
    """Refuse one address `host` is or resolves to (an address that does not parse is refused too)."""
    if allow_private:
        return
    ip = _literal(address)
    reason = "non-canonical" if ip is None else refused_reason(ip)
    if reason is not None:
        raise RefusedAddress(host, address, reason)


def check_literal_host(host: str, *, allow_private: bool) -> None:
    """aiohttp's TCPConnector never asks its resolver about a literal address, so a literal host is checked here,
    before the request; a name goes through GuardedResolver at connect time."""
    if ":" in host or host.replace(".", "").isdigit():
        # The same test aiohttp uses to decide that a host is literal and skip the resolver.
        check_address(host, host.replace("%25", "%"), allow_private=allow_private)


def check_url(url: str, *, allow_private: bool) -> None:
    """The syntax of a webhook URL at registration; the addresses it reaches are checked at each connect."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidUrl(f"webhook URL is {len(url)} characters long; at most {MAX_URL_LENGTH} are allowed")
    if _CONTROL_OR_SPACE.search(url):
        raise InvalidUrl("webhook URL must not contain spaces or control characters (percent-encode them)")
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        raise InvalidUrl("webhook URL cannot be parsed (check the port, and brackets around an IPv6 address)") from None
    if parsed.scheme not in ("http", "https"):
        if not parsed.scheme:
            raise InvalidUrl("webhook URL must be absolute and start with https://")
        raise InvalidUrl(f"webhook URL must use https, not {parsed.scheme}")
    if parsed.scheme == "http" and not allow_private:
        raise InvalidUrl(f"webhook URL must be https; plain http is accepted only when {ALLOW_PRIVATE_ENV}=true")
    # An authority of only userinfo ("https://user@/") has no host either, so credentials are looked at after.
    host = parsed.raw_host
    if not host:
        raise InvalidUrl("webhook URL has no host")
    if parsed.raw_user is not None or parsed.raw_password is not None or "@" in (parsed.raw_authority or ""):
        raise InvalidUrl("webhook URL must not contain credentials (user:password@); a receiver authenticates "
                         "a delivery by its webhook-signature header")
    if "#" in url:
        raise InvalidUrl("webhook URL must not have a fragment (#...)")
    labels = host.rstrip(".").split(".")
    if ":" not in host and _NUMERIC_LABEL.fullmatch(labels[-1]) and _literal(host) is None:
        # aiohttp refuses these at connect, and resolvers read them as an address (127.1 is 127.0.0.1).
        raise InvalidUrl(f"webhook URL host {host} is not a canonical IPv4 address (write it as a.b.c.d)")
    if not allow_private and (labels[-1].lower() == "localhost"):
        # RFC 6761: such a name always means this machine, so no delivery could ever pass the connect check.
        raise InvalidUrl(f"webhook URL host {host} is this machine; {_REFUSED_CLASSES} unless "
                         f"{ALLOW_PRIVATE_ENV}=true")
    try:
        check_literal_host(host, allow_private=allow_private)
    except RefusedAddress as refused:
        raise InvalidUrl(str(refused)) from None


async def _lookup(host: str, port: int, family: int) -> list[ResolveResult]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, family=family, flags=_AI_ADDRCONFIG)
    except (OSError, UnicodeError) as exc:
        raise UnresolvableHost(host, getattr(exc, "strerror", None) or type(exc).__name__) from exc
    results: list[ResolveResult] = []
    for info_family, _, proto, _, address in infos:
        if info_family == socket.AF_INET6:
            if len(address) < 3:
                continue  # this Python was built without IPv6
            if address[3]:
                # The scope (fe80::1%eth0) is what makes a link-local address connectable; as aiohttp does.
                numeric, service = await loop.getnameinfo(address[:4], _NAME_INFO)
                resolved, resolved_port = numeric, int(service)
            else:
                resolved, resolved_port = str(address[0]), int(address[1])
        elif info_family == socket.AF_INET:
            resolved, resolved_port = str(address[0]), int(address[1])
        else:
            continue
        results.append(ResolveResult(hostname=host, host=resolved, port=resolved_port, family=info_family,
                                     proto=proto, flags=_NUMERIC_HOST))
    if not results:
        raise UnresolvableHost(host, "no address")
    return results


async def _checked(host: str, port: int, family: int, allow_private: bool) -> list[ResolveResult]:
    results = await _lookup(host, port, family)
    # Every address must pass: whoever controls the host's DNS could mix one private address among public ones.
    for result in results:
        check_address(host, result["host"], allow_private=allow_private)
    return results


async def resolve_checked(host: str, port: int, *, allow_private: bool) -> list[str]:
    """The addresses `host` resolves to, all of them allowed (RefusedAddress), or UnresolvableHost."""
    results = await _checked(host, port, socket.AF_UNSPEC, allow_private)
    return list(dict.fromkeys(result["host"] for result in results))


class GuardedResolver(AbstractResolver):
    """Resolves and checks in one step at connect time, and hands aiohttp only numeric addresses: the address
    checked is the address connected to, with no DNS-rebinding window between the two."""

    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return await _checked(host, port, family, self.allow_private)

    async def close(self) -> None:
        """Holds nothing: each lookup is the loop's getaddrinfo."""


def connector(*, allow_private: bool, limit_per_host: int, limit: int = 100) -> aiohttp.TCPConnector:
    """A connector whose every name lookup is checked. aiohttp's DNS cache sits in front of a custom resolver;
    it is off so that each new connection is one fresh lookup checked on the spot, and a host re-pointed at a
    private address is refused at once rather than after the cache's TTL. A literal-address host never reaches
    the resolver: callers check it with check_literal_host (WebhookTransport.post does)."""
    return aiohttp.TCPConnector(resolver=GuardedResolver(allow_private=allow_private), use_dns_cache=False,
                                limit=limit, limit_per_host=limit_per_host)
