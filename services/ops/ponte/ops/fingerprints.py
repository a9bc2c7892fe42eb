"""How a secret is shown: never itself, only a short digest that tells two apart."""

from __future__ import annotations

import hashlib


def fingerprint(secret: str) -> str:
    """``sha256:`` and the first 12 hex digits: enough to see which secret is which after
    a rotation, far too little to recover a secret of the length the API requires."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:12]
