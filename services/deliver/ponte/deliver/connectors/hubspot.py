"""HubSpot CRM: batch upsert by a unique property, batch archive, default associations,
reading a record back.

``POST /crm/v3/objects/{objectType}/batch/upsert`` with ``idProperty`` = the target's
unique property (Ponte's external id), at most 100 inputs a call. 200: all written; 207:
some written, ``errors[]`` name the inputs that were not; 429: ``policyName`` and
``Retry-After``/``X-HubSpot-RateLimit-*`` say how long to wait.

``POST /crm/v4/associations/{fromObjectType}/{toObjectType}/batch/associate/default`` with
``inputs: [{from: {id}, to: {id}}]`` creates the default (unlabelled) association of each
pair; ``results`` lists the pairs made, a 207 adds ``errors`` for the others (e.g. a
record that no longer exists). Making a pair that already exists changes nothing, so a
repeat is harmless. Calls carry at most 100 pairs: HubSpot's batch-read limit for
associations is 100 and the corpus we checked states no other figure for this call.

``GET /crm/v3/objects/{objectType}/{id}`` reads a record back (404: not there), with the
mapped properties and the object types it is linked to, for checks and support.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import Field

from ponte.deliver.connectors.base import BatchOutcome, Outgoing, PairsRefused
from ponte.deliver.ratelimit import TokenBucket
from ponte.deliver.targets import Target
from ponte.shared.http_policy import (
    RetryableError,
    TerminalError,
    classify,
    retry_after_s,
    transport_failed,
)


class HubSpotTarget(Target):
    """``kind: hubspot``: a private app's token and the unique property for Ponte's id."""

    kind: Literal["hubspot"]
    base_url: str = "https://api.hubapi.com"
    token: str = Field(repr=False)
    id_property: str = "ponte_id"


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After, else the length of HubSpot's rate-limit window
    (``X-HubSpot-RateLimit-Interval-Milliseconds``): a 429 lasts until the window moves."""
    wait = retry_after_s(response.headers)
    if wait is not None:
        return wait
    interval = response.headers.get("x-hubspot-ratelimit-interval-milliseconds")
    return int(interval) / 1000 if interval and interval.isdigit() else None


ASSOCIATE_BATCH = 100
"""Pairs per associate call."""


class HubSpotConnector:
    def __init__(
        self,
        client: httpx.AsyncClient,
        bucket: TokenBucket,
        *,
        id_property: str,
        token: str,
        read_properties: dict[str, list[str]] | None = None,
        linked_types: dict[str, list[str]] | None = None,
    ) -> None:
        self._client = client
        self._bucket = bucket
        self._id_property = id_property
        self._headers = {"Authorization": f"Bearer {token}"}
        self._read_properties = read_properties or {}
        """object type -> the properties ``read_back`` asks for (HubSpot's GET returns
        only its default properties unless told)."""
        self._linked_types = linked_types or {}
        """object type -> the object types it is associated with, both directions."""

    @classmethod
    def for_target(
        cls, target: HubSpotTarget, client: httpx.AsyncClient, bucket: TokenBucket
    ) -> HubSpotConnector:
        read_properties: dict[str, list[str]] = {}
        linked_types: dict[str, list[str]] = {}
        for mapping in target.objects.values():
            wanted = read_properties.setdefault(mapping.object_type, [target.id_property])
            wanted += [p for p in mapping.properties.values() if p not in wanted]
            for to_entity in mapping.associations.values():
                to_type = target.objects[to_entity].object_type
                for one, other in ((mapping.object_type, to_type), (to_type, mapping.object_type)):
                    if other not in linked_types.setdefault(one, []):
                        linked_types[one].append(other)
        return cls(
            client,
            bucket,
            id_property=target.id_property,
            token=target.token,
            read_properties=read_properties,
            linked_types=linked_types,
        )

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return await self._call("POST", path, json=body)

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        await self._bucket.acquire()
        try:
            response = await self._client.request(
                method, path, json=json, params=params, headers=self._headers
            )
        except (httpx.TimeoutException, httpx.TransportError) as error:
            raise transport_failed(error, f"{method} {path}") from None
        self._bucket.observe(response.headers)
        verdict = classify(response.status_code)
        if verdict == "rate_limited":
            wait = _retry_after(response) or 10.0
            self._bucket.pause(wait)
            policy = _json(response).get("policyName", "")
            raise RetryableError(
                f"rate limited ({policy})", status=429, excerpt=response.text, retry_after=wait
            )
        if verdict == "retryable":
            raise RetryableError(
                f"server error {response.status_code}",
                status=response.status_code,
                excerpt=response.text,
                retry_after=_retry_after(response),
            )
        if verdict == "terminal":
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

    async def associate(self, from_type: str, to_type: str, pairs: list[tuple[str, str]]) -> None:
        """Default-associate each (from, to) pair of CRM ids; raises ``PairsRefused``
        naming the pairs HubSpot did not make (the others are made)."""

        refused: dict[tuple[str, str], str] = {}
        excerpt = ""
        for start in range(0, len(pairs), ASSOCIATE_BATCH):
            chunk = pairs[start : start + ASSOCIATE_BATCH]
            response = await self._post(
                f"/crm/v4/associations/{quote(from_type)}/{quote(to_type)}/batch/associate/default",
                {"inputs": [{"from": {"id": f}, "to": {"id": t}} for f, t in chunk]},
            )
            payload = _json(response)
            made = {
                (str((r.get("from") or {}).get("id")), str((r.get("to") or {}).get("id")))
                for r in payload.get("results", [])
            }
            errors = [e for e in payload.get("errors", []) if isinstance(e, dict)]
            for pair in chunk:
                if pair not in made:  # answered 2xx but not made: say why, or say so
                    refused[pair] = _reason_for(pair, errors)
                    excerpt = excerpt or response.text
        if refused:
            raise PairsRefused(refused, status=207, excerpt=excerpt)

    async def read_back(self, object_type: str, crm_id: str) -> dict[str, Any] | None:
        """The record as HubSpot has it: ``id``, the mapped ``properties`` and, for linked
        object types, ``associations``; None when HubSpot has no such record."""
        params = {}
        if properties := self._read_properties.get(object_type):
            params["properties"] = ",".join(properties)
        if linked := self._linked_types.get(object_type):
            params["associations"] = ",".join(linked)
        try:
            response = await self._call(
                "GET", f"/crm/v3/objects/{quote(object_type)}/{quote(crm_id, safe='')}",
                params=params,
            )  # fmt: skip
        except TerminalError as error:
            if error.status == 404:
                return None
            raise
        return _json(response)


def _reason_for(pair: tuple[str, str], errors: list[dict[str, Any]]) -> str:
    """The message of the error whose ``context`` names either id of the pair; else the
    only error's message when there is one; else that the answer did not list it."""
    for error in errors:
        context = error.get("context") or {}
        named = {
            str(value)
            for values in context.values()
            for value in (values if isinstance(values, list) else [values])
        }
        if named & set(pair):
            return str(error.get("message", "refused"))
    if len(errors) == 1:
        return str(errors[0].get("message", "refused"))
    return "not in the CRM's answer"


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        value = response.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
