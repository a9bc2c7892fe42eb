"""HubSpot CRM v3: batch upsert by a unique property, batch archive.

``POST /crm/v3/objects/{objectType}/batch/upsert`` with ``idProperty`` = the target's
unique property (Ponte's external id), at most 100 inputs a call. 200: all written; 207:
some written, ``errors[]`` name the inputs that were not; 429: ``policyName`` and
``Retry-After``/``X-HubSpot-RateLimit-*`` say how long to wait.
"""

from __future__ import annotations

from typing import Any, Literal

import httpx
from pydantic import Field

from ponte.deliver.connectors.base import (
    BatchOutcome,
    Outgoing,
    RetryableError,
    TerminalError,
)
from ponte.deliver.ratelimit import TokenBucket
from ponte.deliver.targets import Target


class HubSpotTarget(Target):
    """``kind: hubspot``: a private app's token and the unique property for Ponte's id."""

    kind: Literal["hubspot"]
    base_url: str = "https://api.hubapi.com"
    token: str = Field(repr=False)
    id_property: str = "ponte_id"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value and value.replace(".", "", 1).isdigit():
        return float(value)
    interval = response.headers.get("x-hubspot-ratelimit-interval-milliseconds")
    return int(interval) / 1000 if interval and interval.isdigit() else None


class HubSpotConnector:
    def __init__(
        self, client: httpx.AsyncClient, bucket: TokenBucket, *, id_property: str, token: str
    ) -> None:
        self._client = client
        self._bucket = bucket
        self._id_property = id_property
        self._headers = {"Authorization": f"Bearer {token}"}

    @classmethod
    def for_target(
        cls, target: HubSpotTarget, client: httpx.AsyncClient, bucket: TokenBucket
    ) -> HubSpotConnector:
        return cls(client, bucket, id_property=target.id_property, token=target.token)

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        await self._bucket.acquire()
        try:
            response = await self._client.post(path, json=body, headers=self._headers)
        except (httpx.TimeoutException, httpx.TransportError) as error:
            raise RetryableError(f"{type(error).__name__} calling {path}") from None
        self._bucket.observe(response.headers)
        if response.status_code == 429:
            wait = _retry_after(response) or 10.0
            self._bucket.pause(wait)
            policy = _json(response).get("policyName", "")
            raise RetryableError(
                f"rate limited ({policy})", status=429, excerpt=response.text, retry_after=wait
            )
        if response.status_code >= 500:
            raise RetryableError(
                f"server error {response.status_code}",
                status=response.status_code,
                excerpt=response.text,
                retry_after=_retry_after(response),
            )
        if response.status_code >= 400:
            raise TerminalError(
                f"refused with {response.status_code}",
                status=response.status_code,
                excerpt=response.text,
            )
        return response

    async def upsert_batch(self, object_type: str, records: list[Outgoing]) -> BatchOutcome:
        body = {
            "inputs": [
                {
                    "id": record.external_id,
                    "idProperty": self._id_property,
                    "properties": {**record.properties, self._id_property: record.external_id},
                }
                for record in records
            ]
        }
        response = await self._post(f"/crm/v3/objects/{object_type}/batch/upsert", body)
        payload = _json(response)
        outcome = BatchOutcome()
        for result in payload.get("results", []):
            external = (result.get("properties") or {}).get(self._id_property)
            if external is not None:
                outcome.delivered[str(external)] = str(result.get("id"))
        for error in payload.get("errors", []):
            message = str(error.get("message", "refused"))
            for external in (error.get("context") or {}).get("ids", []):
                outcome.failed[str(external)] = message
        for record in records:  # answered 2xx but not listed either way: say so
            if (
                record.external_id not in outcome.delivered
                and record.external_id not in outcome.failed
            ):
                outcome.failed[record.external_id] = "not in the CRM's answer"
        return outcome

    async def delete_batch(self, object_type: str, crm_ids: list[str]) -> None:
        await self._post(
            f"/crm/v3/objects/{object_type}/batch/archive",
            {"inputs": [{"id": crm_id} for crm_id in crm_ids]},
        )


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        value = response.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
