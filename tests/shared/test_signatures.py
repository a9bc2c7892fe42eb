"""Signature schemes (pure functions, no infrastructure)."""

from __future__ import annotations

import pytest

from ponte.shared.rejections import Rejection
from ponte.shared.signatures import (
    SHOPIFY_SIGNATURE,
    WOOCOMMERCE_SIGNATURE,
    sign_standard,
    verify,
    verify_body_hmac,
    verify_standard,
)
from ponte.shared.source_kinds import SourceKind

# The Standard Webhooks specification's own test vector.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def spec_headers(signature: str = SPEC_SIGNATURE) -> dict[str, str]:
    return {
        "webhook-id": SPEC_ID,
        "webhook-timestamp": str(SPEC_TIMESTAMP),
        "webhook-signature": signature,
    }


def test_standard_webhooks_spec_vector() -> None:
    assert sign_standard(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE
    assert (
        verify_standard(
            spec_headers(), SPEC_BODY, [SPEC_SECRET], tolerance_s=300, now=SPEC_TIMESTAMP + 10
        )
        == SPEC_ID
    )


def test_standard_accepts_any_of_several_signatures_and_secrets() -> None:
    headers = spec_headers(f"v1,bm90LXRoaXMtb25l {SPEC_SIGNATURE}")
    verify_standard(
        headers, SPEC_BODY, ["whsec_b3RoZXI=", SPEC_SECRET], tolerance_s=300, now=SPEC_TIMESTAMP
    )


@pytest.mark.parametrize(
    ("headers", "body", "now", "field"),
    [
        (
            {"webhook-timestamp": str(SPEC_TIMESTAMP), "webhook-signature": SPEC_SIGNATURE},
            SPEC_BODY,
            SPEC_TIMESTAMP,
            "webhook-id",
        ),
        (spec_headers(), SPEC_BODY + b" ", SPEC_TIMESTAMP, "webhook-signature"),
        (spec_headers(), SPEC_BODY, SPEC_TIMESTAMP + 301, "webhook-timestamp"),
        (spec_headers(), SPEC_BODY, SPEC_TIMESTAMP - 301, "webhook-timestamp"),
        (
            {**spec_headers(), "webhook-timestamp": "yesterday"},
            SPEC_BODY,
            SPEC_TIMESTAMP,
            "webhook-timestamp",
        ),
        (spec_headers("v2,abc"), SPEC_BODY, SPEC_TIMESTAMP, "webhook-signature"),
        (spec_headers("v1,%%%not-base64"), SPEC_BODY, SPEC_TIMESTAMP, "webhook-signature"),
    ],
    ids=[
        "missing-id",
        "tampered-body",
        "too-late",
        "too-early",
        "bad-timestamp",
        "no-v1",
        "garbage",
    ],
)
def test_standard_rejections_are_401_naming_the_header(
    headers: dict[str, str], body: bytes, now: int, field: str
) -> None:
    with pytest.raises(Rejection) as caught:
        verify_standard(headers, body, [SPEC_SECRET], tolerance_s=300, now=now)
    assert caught.value.status_code == 401 and caught.value.field == field
    assert SPEC_SECRET not in caught.value.message


def test_shopify_matches_an_independent_hmac() -> None:
    # Computed with: printf '%s' BODY | openssl dgst -sha256 -hmac 'hush' -binary | base64
    body = b'{"id":820982911946154508,"email":"jon@example.com"}'
    headers = {SHOPIFY_SIGNATURE: "D0UMXmhjwBRi4y66TmhJrDlhQABD7zI2fm3p6/QLMo8="}
    verify(SourceKind.SHOPIFY, headers, body, ["hush"], tolerance_s=300)
    with pytest.raises(Rejection):
        verify(SourceKind.SHOPIFY, headers, body, ["other"], tolerance_s=300)


def test_woocommerce_matches_an_independent_hmac() -> None:
    body = b'{"id":727,"status":"processing"}'
    headers = {WOOCOMMERCE_SIGNATURE: "GB1pliXS4HJz5Ji86Jw/10hj7aARHXp15zRq6iGETDQ="}
    verify(SourceKind.WOOCOMMERCE, headers, body, ["ck_woo_secret"], tolerance_s=300)
    with pytest.raises(Rejection) as caught:
        verify(SourceKind.WOOCOMMERCE, {}, body, ["ck_woo_secret"], tolerance_s=300)
    assert caught.value.field == WOOCOMMERCE_SIGNATURE


def test_body_hmac_second_secret_valid_during_rotation() -> None:
    body = b'{"id":727,"status":"processing"}'
    headers = {WOOCOMMERCE_SIGNATURE: "GB1pliXS4HJz5Ji86Jw/10hj7aARHXp15zRq6iGETDQ="}
    verify_body_hmac(headers, body, ["new-secret", "ck_woo_secret"], header=WOOCOMMERCE_SIGNATURE)
