"""Status back to the origin: which shop or ERP a record came from, how a CRM stage maps to
that origin's status, and the one API call that sets it (seed 004's "actualización de
información en origen").

Configured in the targets file (``PONTE_TARGETS_FILE``) beside ``targets:``, one entry per
source id, secrets as ``${ENV}``:

```yaml
origins:
  - source: loja-shopify
    kind: shopify                 # POST /admin/api/{version}/orders/{id}/{action}.json
    base_url: https://loja.myshopify.com
    access_token: ${SHOPIFY_ADMIN_TOKEN}      # X-Shopify-Access-Token
    stages: {closedwon: close, closedlost: cancel}
  - source: loja-woo
    kind: woocommerce             # PUT /wp-json/wc/v3/orders/{id} {"status": ...}
    base_url: https://loja.example.com
    consumer_key: ${WOO_CONSUMER_KEY}         # HTTP basic auth (HTTPS only)
    consumer_secret: ${WOO_CONSUMER_SECRET}
    stages: {closedwon: completed, closedlost: cancelled}
  - source: erp-matriz
    kind: erp                     # whatever the ERP offers, as a template
    base_url: https://erp.example.com
    method: PUT
    path: /api/pedidos/{source_key}/situacao
    body: {situacao: "{status}", alterado_em: "{occurred_at}"}
    signing_secret: ${ERP_STATUS_SECRET}      # Standard Webhooks, like the ERP's own webhooks
    headers: {X-Api-Key: ${ERP_API_KEY}}      # or a static header, or both
    stages: {closedwon: FAT, closedlost: CAN}
```

``stages`` maps the CRM's stage (HubSpot's internal ``dealstage`` value) to the origin's
status; a stage not listed is not sent anywhere. ``entity`` (default ``order``) is the
CRM-model entity whose deliveries identify the origin's record: its ``source_key`` is the
shop's own order id.

Every client raises the deliver connectors' ``RetryableError`` (429, 5xx, timeouts,
connection errors, with the server's Retry-After) or ``TerminalError`` (any other 4xx), so
the status-back loop retries and dead-letters exactly as the CRM delivery does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol
from urllib.parse import quote

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from ponte.deliver.connectors.rest import fill
from ponte.shared.config_files import load_entries
from ponte.shared.http_policy import raise_for, transport_failed
from ponte.shared.validation_errors import every_problem


@dataclass(frozen=True)
class StatusUpdate:
    """One status to set on one origin record, and what caused it (for templates, the
    Standard Webhooks id, and the record of what was sent)."""

    source_key: str
    status: str
    stage: str
    crm_id: str
    occurred_at: datetime
    update_id: str
    """Stable per CRM event: the ERP sees the same ``webhook-id`` on a retry."""


# --- configuration ------------------------------------------------------------------------


class OriginBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    """The source id the records came from (sources.yaml)."""
    kind: str
    base_url: str
    entity: str = "order"
    stages: dict[str, str] = Field(min_length=1)
    """CRM stage -> the origin's status."""

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("https://", "http://")):
            raise ValueError("base_url: must start with https:// (or http:// for a local test)")
        return url.rstrip("/")


SHOPIFY_ACTIONS = ("close", "open", "cancel")


class ShopifyOrigin(OriginBase):
    """Shopify Admin REST: an order's state is changed by its action endpoints, not by
    writing a status field (``close`` archives a finished order, ``open`` re-opens it,
    ``cancel`` cancels it)."""

    kind: Literal["shopify"]
    access_token: str = Field(repr=False)
    api_version: str = Field(default="2024-10", pattern=r"^\d{4}-\d{2}$")

    @field_validator("stages")
    @classmethod
    def _known_actions(cls, stages: dict[str, str]) -> dict[str, str]:
        for stage, action in stages.items():
            if action not in SHOPIFY_ACTIONS:
                raise ValueError(f"stages.{stage}: {action!r} is not one of {SHOPIFY_ACTIONS}")
        return stages


class WooCommerceOrigin(OriginBase):
    """WooCommerce REST v3: the order's ``status`` field (pending, processing, on-hold,
    completed, cancelled, refunded, failed, or one a plugin registers)."""

    kind: Literal["woocommerce"]
    consumer_key: str = Field(repr=False)
    consumer_secret: str = Field(repr=False)


class ErpOrigin(OriginBase):
    """Any ERP endpoint: method, path and JSON body are templates over ``{source_key}``,
    ``{status}``, ``{stage}``, ``{crm_id}``, ``{occurred_at}``."""

    kind: Literal["erp"]
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    path: str = Field(pattern=r"^/")
    body: dict[str, Any] = Field(default_factory=lambda: {"status": "{status}"})
    headers: dict[str, str] = Field(default_factory=dict, repr=False)
    signing_secret: str | None = Field(default=None, repr=False)

    @field_validator("headers")
    @classmethod
    def _no_reserved_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        reserved = {"content-type", "webhook-id", "webhook-timestamp", "webhook-signature"}
        for name in headers:
            if name.lower() in reserved:
                raise ValueError(f"headers.{name}: set by Ponte, not configurable")
        return headers


Origin = Annotated[ShopifyOrigin | WooCommerceOrigin | ErpOrigin, Field(discriminator="kind")]
_ORIGIN = TypeAdapter(Origin)


def parse_origin(entry: Any) -> ShopifyOrigin | WooCommerceOrigin | ErpOrigin:
    return _ORIGIN.validate_python(entry)


def load_origins(path: Path) -> dict[str, ShopifyOrigin | WooCommerceOrigin | ErpOrigin]:
    """The ``origins:`` list by source id; an invalid entry is an error naming it and the
    field."""
    origins: dict[str, ShopifyOrigin | WooCommerceOrigin | ErpOrigin] = {}
    for index, entry in enumerate(load_entries(path, "origins")):
        name = entry.get("source", "?") if isinstance(entry, dict) else "?"
        try:
            origin = parse_origin(entry)
        except ValidationError as error:
            details = every_problem(error)
            raise ValueError(f"{path}: origins[{index}] ({name}): {details}") from None
        if origin.source in origins:
            raise ValueError(f"{path}: origins[{index}]: source {origin.source!r} listed twice")
        origins[origin.source] = origin
    return origins


# --- clients ------------------------------------------------------------------------------


class OriginClient(Protocol):
    async def set_status(self, update: StatusUpdate) -> httpx.Response:
        """Set the status on the origin; raise ``RetryableError`` or ``TerminalError``."""
        ...


async def send(client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One call, classified: 2xx returned, 429/5xx/network retryable, other 4xx terminal."""
    what = f"{method} {path}"
    try:
        response = await client.request(method, path, **kwargs)
    except (httpx.TimeoutException, httpx.TransportError) as error:
        raise transport_failed(error, what) from None
    raise_for(response, what)
    return response


class ShopifyClient:
    def __init__(self, origin: ShopifyOrigin, client: httpx.AsyncClient) -> None:
        self._origin = origin
        self._client = client
        self._headers = {"X-Shopify-Access-Token": origin.access_token}

    async def set_status(self, update: StatusUpdate) -> httpx.Response:
        action = update.status
        path = (
            f"/admin/api/{self._origin.api_version}/orders/"
            f"{quote(update.source_key, safe='')}/{action}.json"
        )
        return await send(self._client, "POST", path, json={}, headers=self._headers)


class WooCommerceClient:
    def __init__(self, origin: WooCommerceOrigin, client: httpx.AsyncClient) -> None:
        self._client = client
        self._auth = httpx.BasicAuth(origin.consumer_key, origin.consumer_secret)

    async def set_status(self, update: StatusUpdate) -> httpx.Response:
        path = f"/wp-json/wc/v3/orders/{quote(update.source_key, safe='')}"
        return await send(
            self._client, "PUT", path, json={"status": update.status}, auth=self._auth
        )


def standard_webhook_headers(secret: str, webhook_id: str, body: bytes) -> dict[str, str]:
    """Standard Webhooks v1 headers, the scheme Ponte verifies on the ERP's own webhooks
    (``ponte.shared.signatures``): the ERP checks ours with the same code. A ``whsec_``
    secret is base64 after the prefix, any other is its UTF-8 bytes."""
    key = secret.encode()
    if secret.startswith("whsec_"):
        try:
            key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except ValueError:
            pass  # not base64 after all: used as written, as the ingest side does
    timestamp = int(time.time())
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    signature = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": f"v1,{signature}",
    }


class ErpClient:
    def __init__(self, origin: ErpOrigin, client: httpx.AsyncClient) -> None:
        self._origin = origin
        self._client = client

    def request_for(self, update: StatusUpdate) -> tuple[str, bytes, dict[str, str]]:
        """(path, body, headers) of the call: templates filled, body signed."""
        values = {
            "source_key": update.source_key,
            "status": update.status,
            "stage": update.stage,
            "crm_id": update.crm_id,
            "occurred_at": update.occurred_at.isoformat(),
        }
        path = fill(
            self._origin.path, {name: quote(value, safe="") for name, value in values.items()}
        )
        body = orjson.dumps(fill(self._origin.body, values))
        headers = {**self._origin.headers, "Content-Type": "application/json"}
        if self._origin.signing_secret:
            headers.update(
                standard_webhook_headers(self._origin.signing_secret, update.update_id, body)
            )
        return path, body, headers

    async def set_status(self, update: StatusUpdate) -> httpx.Response:
        path, body, headers = self.request_for(update)
        return await send(self._client, self._origin.method, path, content=body, headers=headers)


def build_client(
    origin: ShopifyOrigin | WooCommerceOrigin | ErpOrigin, timeout_s: float
) -> tuple[OriginClient, httpx.AsyncClient]:
    """The origin's client and the HTTP client it owns (the caller closes it)."""
    http = httpx.AsyncClient(base_url=origin.base_url, timeout=timeout_s)
    if isinstance(origin, ShopifyOrigin):
        return ShopifyClient(origin, http), http
    if isinstance(origin, WooCommerceOrigin):
        return WooCommerceClient(origin, http), http
    return ErpClient(origin, http), http
