"""SSRF guard: which network addresses outbound requests (http jobs, webhooks) may reach."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from django.conf import settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Cloud metadata endpoints that are not link-local on every provider (Alibaba, Oracle legacy, AWS IPv6).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("100.100.100.200", "192.0.0.192", "fd00:ec2::254")
)


class ForbiddenAddress(Exception):
    """The destination resolves to an address outbound requests must not reach."""


def _allowlist() -> tuple[set[str], list[ipaddress.IPv4Network | ipaddress.IPv6Network]]:
    hosts: set[str] = set()
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for entry in settings.SCHEDULER_HTTP_ALLOWLIST:
        entry = entry.strip().lower()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            hosts.add(entry.rstrip("."))
    return hosts, networks


def ip_forbidden_reason(ip: IPAddress) -> str | None:
    """Why this address is refused (loopback, private, link-local, reserved, metadata), or None."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    checks = (
        (ip in METADATA_ADDRESSES, "a cloud metadata address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_private, "a private address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_reserved, "a reserved address"),
        (not ip.is_global, "a non-global address"),
    )
    for hit, what in checks:
        if hit:
            return f"{ip} is {what}"
    return None


def resolve(host: str, port: int | None = None) -> list[IPAddress]:
    """Every address `host` resolves to (an IP literal resolves to itself)."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, port or 0, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))


def host_address_error(host: str, addresses: list[IPAddress]) -> str | None:
    """Why connecting to `host` at these addresses is refused, or None when every address is allowed."""
    host = host.lower().rstrip(".").strip("[]")
    allowed_hosts, allowed_networks = _allowlist()
    if host in allowed_hosts:
        return None
    for ip in addresses:
        if any(ip in net for net in allowed_networks if net.version == ip.version):
            continue
        reason = ip_forbidden_reason(ip)
        if reason:
            return f"{host} resolves to {reason} (not in SCHEDULER_HTTP_ALLOWLIST)"
    return None


def url_address_error(url: str, *, resolve_names: bool = True) -> str | None:
    """Why a request to `url` is refused (scheme, host, resolved addresses), or None if allowed."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"}:
        return f"scheme must be http or https, not {parts.scheme!r}"
    host = parts.hostname
    if not host:
        return "the URL has no host"
    if not resolve_names and not _is_ip_literal(host):
        return None
    try:
        addresses = resolve(host, parts.port)
    except (OSError, ValueError) as exc:
        return f"cannot resolve {host}: {exc}"
    return host_address_error(host, addresses)


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def checked_address(host: str, port: int) -> IPAddress:
    """Resolve `host`, refuse forbidden destinations, return the address to connect to (pinned)."""
    addresses = resolve(host, port)
    if not addresses:
        raise ForbiddenAddress(f"{host} resolves to no address")
    error = host_address_error(host, addresses)
    if error:
        raise ForbiddenAddress(error)
    return addresses[0]
