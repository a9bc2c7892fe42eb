"""``kind: webhook``: for a CRM Ponte has no connector for, POST each batch as signed JSON
to a URL the customer's own code (or an iPaaS) receives.

```yaml
targets:
  - id: crm-propio
    kind: webhook
    base_url: https://crm.example.com
    path: /ponte/records
    secret: ${CRM_WEBHOOK_SECRET}     # whsec_<base64>, as Standard Webhooks generate them
    objects:
      company: {object_type: company, properties: {legal_name: name, document: cnpj}}
```

The body (``docs/connectors/webhook.md`` describes it field by field)::

    {"type": "ponte.records", "ponte_version": "0.1.0", "object_type": "company",
     "operation": "upsert",
     "records": [{"external_id": "erp/company/C1", "crm_id": null,
                  "properties": {"name": "Acme"}}]}

Signed the Standard Webhooks way, with the very code Ponte's ingest uses to sign and verify
(``ponte.shared.signatures.sign_standard``): ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature: v1,<base64 HMAC-SHA256("{id}.{timestamp}.{body}")>``, the key being
the base64-decoded bytes after ``whsec_``.

``webhook-id`` is the receiver's idempotency key, so it must be the same when the engine
retries a call and different for a different call. It is derived from the body (a hash of
target, object type, operation and records): a retry sends the same body, hence the same
id; a different batch has a different body. The timestamp is in the header only, never in
the body, so it can be fresh on each attempt without changing the id.

Answers: any 2xx is delivered; the CRM id of each record is the receiver's when it answers
``{"ids": {"<external id>": "<its id>"}}``, else the external id itself. 410 Gone means the
receiver retired this endpoint: terminal (the Standard Webhooks convention). 429, 5xx,
timeouts: retryable with Retry-After; other 4xx: terminal.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import time
from typing import Any, Literal

import httpx
import orjson
from pydantic import ConfigDict, Field, field_validator

from ponte.deliver.connectors.base import BatchOutcome, Outgoing
from ponte.deliver.ratelimit import TokenBucket
from ponte.deliver.targets import Target
from ponte.shared.http_policy import (
    RetryableError,
    TerminalError,
    classify,
    retry_after_s,
    transport_failed,
)
from ponte.shared.signatures import (
    STANDARD_ID,
    STANDARD_SIGNATURE,
    STANDARD_TIMESTAMP,
    sign_standard,
)

PONTE_VERSION = importlib.metadata.version("ponte")
MESSAGE_TYPE = "ponte.records"


class WebhookTarget(Target):
    """``kind: webhook``: the receiving URL (``base_url`` + ``path``) and the signing
    secret the receiver verifies with."""

    # Errors name the field but never echo the input: it holds the signing secret.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    kind: Literal["webhook"]
    path: str = Field(default="/", pattern=r"^/")
    secret: str = Field(repr=False, min_length=16)
    headers: dict[str, str] = Field(default_factory=dict, repr=False)

    @field_validator("headers")
    @classmethod
    def _no_reserved_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        reserved = {"content-type", STANDARD_ID, STANDARD_TIMESTAMP, STANDARD_SIGNATURE}
        for name in headers:
            if name.lower() in reserved:
                raise ValueError(f"headers.{name}: set by Ponte, not configurable")
        return headers


class WebhookConnector:
    def __init__(
        self, target: WebhookTarget, client: httpx.AsyncClient, bucket: TokenBucket
    ) -> None:
        self._target = target
        self._client = client
        self._bucket = bucket

    @classmethod
    def for_target(
        cls, target: WebhookTarget, client: httpx.AsyncClient, bucket: TokenBucket
    ) -> WebhookConnector:
        return cls(target, client, bucket)

    def message_id(self, body: bytes) -> str:
        """Same body, same id (a retry); another body, another id (another call)."""
        digest = hashlib.sha256(self._target.id.encode() + b"\n" + body).hexdigest()
        return f"msg_{digest[:32]}"

    def request_for(self, message: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        """The body and headers of one call, signed now."""
        body = orjson.dumps({"type": MESSAGE_TYPE, "ponte_version": PONTE_VERSION, **message})
        message_id = self.message_id(body)
        timestamp = int(time.time())
        headers = {
            **self._target.headers,
            "Content-Type": "application/json",
            STANDARD_ID: message_id,
            STANDARD_TIMESTAMP: str(timestamp),
            STANDARD_SIGNATURE: sign_standard(self._target.secret, message_id, timestamp, body),
        }
        return body, headers

    async def _post(self, message: dict[str, Any]) -> httpx.Response:
        body, headers = self.request_for(message)
        what = f"POST {self._target.path} ({message['operation']})"
        await self._bucket.acquire()
        try:
            response = await self._client.post(self._target.path, content=body, headers=headers)
        except (httpx.TimeoutException, httpx.TransportError) as error:
            raise transport_failed(error, what) from None
        status = response.status_code
        if classify(status) in ("rate_limited", "retryable"):
            wait = retry_after_s(response.headers)
            if wait is not None:
                self._bucket.pause(wait)
            kind = "rate limited" if status == 429 else "server error"
            raise RetryableError(
                f"{kind} {status} on {what}",
                status=status,
                excerpt=response.text,
                retry_after=wait,
            )
        if status == 410:
            raise TerminalError(
                f"the receiver answered 410 Gone on {what}: the endpoint is retired",
                status=status,
                excerpt=response.text,
            )
        if status >= 400:
            raise TerminalError(
                f"refused with {status} on {what}", status=status, excerpt=response.text
            )
        return response

    async def upsert_batch(self, object_type: str, records: list[Outgoing]) -> BatchOutcome:
        response = await self._post(
            {
                "object_type": object_type,
                "operation": "upsert",
                "records": [
                    {
                        "external_id": record.external_id,
                        "crm_id": record.crm_id,
                        "properties": record.properties,
                    }
                    for record in records
                ],
            }
        )
        try:
            answer = response.json()
        except ValueError:
            answer = None
        ids = answer.get("ids") if isinstance(answer, dict) else None
        ids = ids if isinstance(ids, dict) else {}
        return BatchOutcome(
            delivered={
                record.external_id: str(ids.get(record.external_id) or record.external_id)
                for record in records
            }
        )

    async def delete_batch(self, object_type: str, crm_ids: list[str]) -> None:
        await self._post(
            {
                "object_type": object_type,
                "operation": "delete",
                "records": [{"crm_id": crm_id} for crm_id in crm_ids],
            }
        )

    async def associate(self, from_type: str, to_type: str, pairs: list[tuple[str, str]]) -> None:
        await self._post(
            {
                "object_type": from_type,
                "operation": "associate",
                "to_object_type": to_type,
                "pairs": [{"from_crm_id": a, "to_crm_id": b} for a, b in pairs],
            }
        )

    async def read_back(self, object_type: str, crm_id: str) -> dict[str, Any] | None:
        raise TerminalError(
            f"target {self._target.id} is a webhook: Ponte only sends to it and cannot read "
            f"{object_type} {crm_id} back"
        )
