"""``POST /webhooks/{source_id}``: the door every ERP and shop knocks on."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.routing import Route

from ponte.ingest.deps import IntakeDep
from ponte.ingest.intake import IncomingRequest, Intake

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


class Accepted(BaseModel):
    event_id: str = Field(
        description="Ponte's id of the delivery; a re-sent delivery gets the same id."
    )
    records: int | None = Field(default=None, description="Record events written to Kafka.")
    duplicate: bool = Field(description="True when this delivery was already accepted earlier.")


class Problem(BaseModel):
    error: str = Field(description="Stable machine-readable reason, e.g. bad_signature.")
    message: str = Field(description="What is wrong, naming the field or header at fault.")
    field: str | None = None


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "description": description}
    for status, description in {
        400: "Body not JSON, not valid in its declared charset, or a shop topic header missing.",
        401: "Signature missing, wrong, or its timestamp outside the tolerance (replay).",
        403: "Client address not in the source's allowlist, or table not allowed.",
        404: "Unknown or inactive source.",
        409: "The same delivery is being accepted by a concurrent request; retry later.",
        413: "Body over the configured limit.",
        415: "Unknown charset declared in Content-Type.",
        422: "Not a valid envelope; the message names the field.",
        503: "The broker did not acknowledge in time; nothing was accepted. Retry later.",
    }.items()
}


@router.post(
    "/{source_id}",
    status_code=202,
    response_model=Accepted,
    responses={
        200: {"model": Accepted, "description": "A duplicate (or a WooCommerce ping)."},
        **_ERRORS,
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "description": "Ponte's ERP envelope, or a Shopify / "
                        "WooCommerce webhook payload, signed per the source's kind.",
                    }
                }
            },
        }
    },
    summary="Receive one signed webhook delivery",
)
async def receive_webhook(source_id: str, request: Request, intake: IntakeDep) -> JSONResponse:
    """Answers 202 only once the broker has acknowledged every record event of the
    delivery. Authentication depends on the source's kind: Standard Webhooks headers for
    ERPs, ``X-Shopify-Hmac-Sha256`` for Shopify, ``X-WC-Webhook-Signature`` for
    WooCommerce."""
    return await _answer(source_id, request, intake)


async def _answer(source_id: str, request: Request, intake: Intake) -> JSONResponse:
    answer = await intake.handle(
        IncomingRequest(
            source_id=source_id,
            headers=request.headers,
            peer=request.client.host if request.client else None,
            forwarded_for=", ".join(request.headers.getlist("x-forwarded-for")) or None,
            body_chunks=request.stream(),
        )
    )
    return JSONResponse(answer.body, status_code=answer.status_code, headers=answer.headers)


async def fast_receive_webhook(request: Request) -> JSONResponse:
    """The same endpoint as a plain Starlette route, which serves the requests.

    FastAPI's per-request machinery (dependency solving, parameter parsing) cost a third of
    ingest's CPU in the benchmark (bench/ingest.py, docs/benchmarks.md) for a route that
    needs neither; the FastAPI route above stays registered after this one so the OpenAPI
    document still describes the endpoint."""
    return await _answer(request.path_params["source_id"], request, request.app.state.intake)


FAST_ROUTE = Route("/webhooks/{source_id}", fast_receive_webhook, methods=["POST"])
