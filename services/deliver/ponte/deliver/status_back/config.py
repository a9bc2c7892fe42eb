"""Which CRM targets may call Ponte back and how their calls are authenticated, with the
origins they update: read from the targets file once, so that the route and the consumer
share one configuration.

```yaml
crm_webhooks:                    # in the targets file, beside targets: and origins:
  - target: hubspot-main         # POST /crm-webhooks/hubspot/hubspot-main
    client_secret: ${HUBSPOT_CLIENT_SECRET}
    public_base_url: https://ponte.example.com   # what HubSpot calls (before the path)
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ponte.deliver.origin import ErpOrigin, ShopifyOrigin, WooCommerceOrigin, load_origins
from ponte.shared.config_files import load_entries
from ponte.shared.validation_errors import every_problem


class CrmWebhook(BaseModel):
    """One CRM target that may call Ponte back, and how its calls are authenticated."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    kind: Literal["hubspot"] = "hubspot"
    client_secret: str = Field(min_length=1, repr=False)
    public_base_url: str | None = Field(default=None, pattern=r"^https?://[^/?#]+(/[^?#]*)?$")
    """The scheme, host (and any path prefix) HubSpot calls; None: the URL as received."""

    def signed_uri(self, request: Request) -> str:
        """The URI HubSpot signed: the public base URL + the path Ponte received (a proxy
        that strips a prefix must be given that prefix in ``public_base_url``)."""
        if self.public_base_url is None:
            return str(request.url)
        query = request.url.query
        path = request.url.path
        return self.public_base_url.rstrip("/") + path + (f"?{query}" if query else "")


@dataclass
class StatusBackConfig:
    webhooks: dict[str, CrmWebhook] = field(default_factory=dict)
    origins: dict[str, ShopifyOrigin | WooCommerceOrigin | ErpOrigin] = field(default_factory=dict)


def load_config(path: Path | None) -> StatusBackConfig:
    """``crm_webhooks:`` and ``origins:`` of the targets file (both optional); an invalid
    entry is an error naming it and the field."""
    if path is None:
        return StatusBackConfig()
    webhooks: dict[str, CrmWebhook] = {}
    for index, entry in enumerate(load_entries(path, "crm_webhooks")):
        try:
            webhook = CrmWebhook.model_validate(entry)
        except ValidationError as error:
            details = every_problem(error)
            raise ValueError(f"{path}: crm_webhooks[{index}]: {details}") from None
        webhooks[webhook.target] = webhook
    return StatusBackConfig(webhooks, load_origins(path))
