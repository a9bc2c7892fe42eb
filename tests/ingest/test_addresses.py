"""Client address and allowlist (pure functions)."""

from __future__ import annotations

import pytest

from ponte.ingest.addresses import check_allowed, client_address, networks
from ponte.shared.rejections import Rejection

PROXIES = networks(["10.0.0.0/8"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("203.0.113.9", None, "203.0.113.9"),
        ("203.0.113.9", "198.51.100.1", "203.0.113.9"),  # untrusted peer: header ignored
        ("10.0.0.5", "198.51.100.1", "198.51.100.1"),  # trusted proxy vouches
        ("10.0.0.5", "1.1.1.1, 198.51.100.1, 10.0.0.7", "198.51.100.1"),  # rightmost untrusted
        ("10.0.0.5", "garbage", "10.0.0.5"),
        ("::ffff:10.0.0.5", "198.51.100.1", "198.51.100.1"),  # IPv4-mapped peer
    ],
)
def test_client_address(peer: str, forwarded: str | None, expected: str) -> None:
    assert client_address(peer, forwarded, PROXIES) == expected


def test_allowlist_names_the_address() -> None:
    check_allowed("198.51.100.1", networks(["198.51.100.0/24"]), "erp")
    check_allowed("2001:db8::1", [], "erp")  # no allowlist: anyone
    with pytest.raises(Rejection) as caught:
        check_allowed("192.0.2.1", networks(["198.51.100.0/24", "2001:db8::/32"]), "erp")
    assert caught.value.status_code == 403
    assert "192.0.2.1" in caught.value.message and "erp" in caught.value.message
