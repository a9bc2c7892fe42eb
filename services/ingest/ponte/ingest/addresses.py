"""Which address a request came from, and whether the source allows it.

``X-Forwarded-For`` is believed only when the direct peer is a trusted proxy, and then it
is read from the right, skipping trusted proxies: the first untrusted hop is the client.
Anyone can write the left-most entries, so a sender cannot talk its way past the
allowlist by forging the header.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence

from ponte.shared.rejections import Rejection

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> IpAddress | None:
    """The address in ``text``, or None. Cached: a sender's few addresses are parsed over
    and over, once per request (addresses are immutable, so sharing them is safe)."""
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _within(address: IpAddress, networks: Sequence[IpNetwork]) -> bool:
    return any(address.version == network.version and address in network for network in networks)


def client_address(
    peer: str | None, forwarded_for: str | None, trusted_proxies: Sequence[IpNetwork]
) -> str | None:
    """The client's address as far as the trusted proxies vouch for it."""
    address = _parse(peer) if peer else None
    if address is None:
        return peer
    if not forwarded_for or not _within(address, trusted_proxies):
        return str(address)
    for hop in reversed(forwarded_for.split(",")):
        hop_address = _parse(hop)
        if hop_address is None:
            break  # garbage in the chain: stop at the last address we could vouch for
        address = hop_address
        if not _within(hop_address, trusted_proxies):
            break
    return str(address)


def check_allowed(address: str | None, allowed: Sequence[IpNetwork], source_id: str) -> None:
    """403 naming the address when the source has an allowlist that does not hold it
    (the seeds' "Esse IP não está permitido")."""
    if not allowed:
        return
    parsed = _parse(address) if address else None
    if parsed is None or not _within(parsed, allowed):
        raise Rejection(
            403,
            "ip_not_allowed",
            f"address {address} is not allowed for source {source_id}",
            field="client_address",
        )


def networks(cidrs: Sequence[str]) -> list[IpNetwork]:
    return [ipaddress.ip_network(cidr, strict=False) for cidr in cidrs]
