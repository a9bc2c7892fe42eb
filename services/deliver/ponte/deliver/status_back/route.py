"""``POST /crm-webhooks/hubspot/{target_id}``: HubSpot's signed webhook batch, answered 200
only once every event is in the status topic, so that HubSpot re-sends (it retries 5xx and
timeouts) whatever Ponte could not keep; every refusal names the header or field at fault."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ponte.deliver.status_back.events import InvalidBatch, parse_batch
from ponte.deliver.status_back.intake import BrokerUnavailable
from ponte.deliver.status_back.service import StatusBack
from ponte.deliver.status_back.signature import SignatureRejected, verify_hubspot_v3
from ponte.shared import problems
from ponte.shared.problems import Problem

log = logging.getLogger(__name__)

router = APIRouter(prefix="/crm-webhooks", tags=["status-back"])


def get_status_back(request: Request) -> StatusBack:
    status_back: StatusBack = request.app.state.status_back
    return status_back


StatusBackDep = Annotated[StatusBack, Depends(get_status_back)]


class CrmAccepted(BaseModel):
    accepted: int = Field(description="Events written to the status topic.")


def _problem(
    status: int, error: str, message: str, field_name: str | None = None, **headers: str
) -> JSONResponse:
    return problems.answer(status, error, message, field=field_name, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The raw body (the signature covers its exact bytes), or None past ``limit``."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/hubspot/{target_id}",
    response_model=CrmAccepted,
    responses={
        status: {"model": Problem, "description": description}
        for status, description in {
            400: "Body not a JSON array of HubSpot events; the message names the field.",
            401: "X-HubSpot-Signature-v3 missing or wrong, or its timestamp too old.",
            404: "No crm_webhooks entry for this target.",
            413: "Body over the configured limit.",
            503: "The broker did not acknowledge in time; nothing was accepted. Retry later.",
        }.items()
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "array",
                        "items": {"type": "object"},
                        "description": "HubSpot's webhook batch (deal.propertyChange events).",
                    }
                }
            },
        }
    },
    summary="Receive HubSpot's signed webhook batch (deal stage changes)",
)
async def hubspot_webhook(
    target_id: str, request: Request, status_back: StatusBackDep
) -> JSONResponse:
    """Answers 200 only once every event of the batch is in the status topic; the deliver
    service then sets the mapped status on the order's origin (shop or ERP)."""
    webhook = status_back.config.webhooks.get(target_id)
    if webhook is None:
        return _problem(404, "unknown_target", f"no crm_webhooks entry for {target_id!r}")
    body = await _read_body(request, status_back.settings.max_body_bytes)
    if body is None:
        return _problem(413, "body_too_large", "body over the configured limit", "body")
    try:
        verify_hubspot_v3(
            request.headers,
            request.method,
            webhook.signed_uri(request),
            body,
            webhook.client_secret,
        )
    except SignatureRejected as error:
        log.warning("CRM webhook refused", extra={"target": target_id, "reason": str(error)})
        return _problem(401, "bad_signature", str(error))
    try:
        events = parse_batch(body)
    except InvalidBatch as error:
        return _problem(400, "invalid_body", str(error), error.field)
    try:
        await status_back.accept(target_id, events)
    except BrokerUnavailable as error:
        log.error("broker unavailable; answered 503", extra={"target": target_id})
        return _problem(
            503,
            "broker_unavailable",
            str(error),
            **{"Retry-After": str(status_back.settings.retry_after_s)},
        )
    return JSONResponse(CrmAccepted(accepted=len(events)).model_dump())
