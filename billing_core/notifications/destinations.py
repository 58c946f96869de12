"""Where a tenant's webhook may connect (the SSRF rule).

A webhook URL is the tenant's choice, so the worker must not become the tenant's way into the
platform's own network. The host is resolved ONCE; if any address it resolves to is not public
(loopback, private, link-local such as cloud metadata, shared/CGNAT, multicast, reserved,
unspecified, and the IPv6 prefixes that embed an IPv4 address: IPv4-mapped, NAT64, 6to4) the
delivery is refused; otherwise the connection goes to that checked address, so a second lookup
(DNS rebinding) cannot move it. A lookup that fails refuses the attempt (fail closed).

On in every environment; `WEBHOOK_ALLOW_PRIVATE_ADDRESSES=true` is the explicit opt-out for
receivers on a private network (`make run` and the tests set it for their local receivers). The
host is still resolved once and the checked address used.
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

# prefixes that carry an IPv4 address inside an IPv6 one, which Python's is_global judges as global
_EMBEDDING_V6 = tuple(ipaddress.ip_network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48", "2002::/16"))

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_public(ip: Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_public(ip.ipv4_mapped)
        if any(ip in network for network in _EMBEDDING_V6):
            return False
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified or ip.is_loopback)


@dataclass(frozen=True)
class Destination:
    """A checked address to connect to, or why there is none."""
    address: str | None
    refused: str | None = None
    retryable: bool = False  # a failed lookup may succeed later; a non-public address will not


def resolve(host: str, port: int, allow_private_addresses: bool = False) -> Destination:
    """Resolve once and check every address; the first one is the one to connect to."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        return Destination(None, f"the webhook host could not be resolved ({exc}); not attempted", retryable=True)
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses:
        return Destination(None, "the webhook host resolves to no address; not attempted", retryable=True)
    if not allow_private_addresses:
        for ip in addresses:
            if not is_public(ip):
                return Destination(None, f"the webhook host resolves to a non-public address ({ip}); refused "
                                         "(WEBHOOK_ALLOW_PRIVATE_ADDRESSES=true allows it)")
    return Destination(str(addresses[0]))


def pin(connection: object, address: str) -> None:
    """Make an http.client connection connect to `address` while keeping its host for the Host
    header, the TLS server name and certificate check. http.client opens its socket through the
    instance's `_create_connection` (socket.create_connection); replacing it changes only where
    the TCP connection goes."""
    def create_connection(target: tuple[str, int], *args: object, **kwargs: object) -> socket.socket:
        return socket.create_connection((address, target[1]), *args, **kwargs)  # type: ignore[arg-type]

    connection._create_connection = create_connection  # type: ignore[attr-defined]
