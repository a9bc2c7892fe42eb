"""HubSpot's v3 webhook signature: a request is believed only if it is signed with the
app's client secret and fresh, so that nobody else can move an order's status.

HubSpot's v3 signature (developers.hubspot.com, "Validating requests"): base64 of
HMAC-SHA256, keyed by the app's client secret, over ``method + URI + body + timestamp``,
where the timestamp is ``X-HubSpot-Request-Timestamp`` (milliseconds) and must be at most
five minutes old, and the URI is the full URL HubSpot called, with ``%3A %2F %3F %40 %21
%24 %27 %28 %29 %2A %2C %3B`` decoded. Behind a proxy the URL Ponte sees is not the one
HubSpot called, so each webhook target can name its ``public_base_url``
(``ponte.deliver.status_back.config``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

HUBSPOT_MAX_AGE_S = 300
"""HubSpot: reject a request whose timestamp is older than five minutes (a replay)."""
HUBSPOT_MAX_AHEAD_S = 60
"""A timestamp this far in the future is not a clock skew but a forgery."""
SIGNATURE_HEADER = "x-hubspot-signature-v3"
TIMESTAMP_HEADER = "x-hubspot-request-timestamp"
_URI_DECODED = {
    "%3A": ":", "%2F": "/", "%3F": "?", "%40": "@", "%21": "!", "%24": "$",
    "%27": "'", "%28": "(", "%29": ")", "%2A": "*", "%2C": ",", "%3B": ";",
}  # fmt: skip
"""The escapes HubSpot decodes before signing the URI (any letter case)."""


class SignatureRejected(Exception):
    """Why a CRM webhook is not believed; the message names the header, never a secret."""


def hubspot_uri(uri: str) -> str:
    """The URI as HubSpot signs it: the listed escapes decoded, nothing else."""
    for escaped, character in _URI_DECODED.items():
        uri = uri.replace(escaped, character).replace(escaped.lower(), character)
    return uri


def sign_hubspot_v3(secret: str, method: str, uri: str, body: bytes, timestamp: str) -> str:
    """The ``X-HubSpot-Signature-v3`` value for a request (HubSpot's side; tests use it)."""
    content = f"{method.upper()}{hubspot_uri(uri)}".encode() + body + timestamp.encode()
    return base64.b64encode(hmac.new(secret.encode(), content, hashlib.sha256).digest()).decode()


def verify_hubspot_v3(
    headers: Any, method: str, uri: str, body: bytes, secret: str, now: float | None = None
) -> None:
    """Raise ``SignatureRejected`` unless the request carries a fresh, valid signature."""
    signature = headers.get(SIGNATURE_HEADER)
    timestamp = headers.get(TIMESTAMP_HEADER)
    if not signature:
        raise SignatureRejected("X-HubSpot-Signature-v3 is missing")
    if not timestamp or not timestamp.isdigit():
        raise SignatureRejected("X-HubSpot-Request-Timestamp is missing or not milliseconds")
    age_s = (now if now is not None else time.time()) - int(timestamp) / 1000
    if age_s > HUBSPOT_MAX_AGE_S:
        raise SignatureRejected(
            f"X-HubSpot-Request-Timestamp is {int(age_s)} s old (at most {HUBSPOT_MAX_AGE_S})"
        )
    if age_s < -HUBSPOT_MAX_AHEAD_S:
        raise SignatureRejected("X-HubSpot-Request-Timestamp is in the future")
    expected = sign_hubspot_v3(secret, method, uri, body, timestamp)
    if not hmac.compare_digest(expected.encode(), signature.strip().encode()):
        raise SignatureRejected("X-HubSpot-Signature-v3 does not match the request")
