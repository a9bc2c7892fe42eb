"""STAND-INS for the Shopify Admin REST API and the WooCommerce REST API v3, for tests:
not Shopify, not WooCommerce.

Each speaks the documented shape of the calls Ponte makes to set an order's status, and
nothing else:

- Shopify: ``POST /admin/api/{version}/orders/{id}/close.json`` (``open.json``,
  ``cancel.json``) with ``X-Shopify-Access-Token``; 401 ``{"errors": "[API] Invalid API key
  or access token ..."}``, 404 ``{"errors": "Not Found"}``, 422 ``{"errors": {...}}`` (here:
  cancelling a closed order, a simplification of Shopify's rules), 429 with
  ``Retry-After``; 200 ``{"order": {...}}``.
- WooCommerce: ``PUT /wp-json/wc/v3/orders/{id}`` ``{"status": ...}`` with the consumer key
  and secret as HTTP basic auth; 401 ``woocommerce_rest_authentication_error``, 404
  ``woocommerce_rest_shop_order_invalid_id``, 400 ``rest_invalid_param`` for an unknown
  status, errors as ``{"code", "message", "data": {"status"}}``; 200 with the order.

Tests inject failures (``fail_next``: statuses for the next calls) and read back every call
and every change that was applied, in order.
"""

from __future__ import annotations

import base64
import hmac
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

WOO_STATUSES = (
    "pending", "processing", "on-hold", "completed", "cancelled", "refunded", "failed",
)  # fmt: skip


@dataclass
class ShopState:
    """One stand-in shop: its orders, credentials, and what happened to it."""

    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str, int]] = field(default_factory=list)
    """Every request: (method, path, status answered)."""
    applied: list[tuple[str, str]] = field(default_factory=list)
    """Every change that took effect: (order id, action or status)."""
    fail_next: list[int] = field(default_factory=list)
    """Statuses to answer the next calls with (e.g. [503, 503, 429])."""
    retry_after: str = "0.2"
    """Retry-After sent with an injected 429."""

    def add_order(self, order_id: str, **fields: Any) -> None:
        self.orders[order_id] = {"id": int(order_id), **fields}


def create_shopify_stand_in(state: ShopState, access_token: str) -> FastAPI:
    app = FastAPI(title="Shopify Admin REST stand-in (not Shopify)")

    def answer(request: Request, status: int, body: Any, **headers: str) -> JSONResponse:
        state.calls.append((request.method, request.url.path, status))
        return JSONResponse(body, status_code=status, headers=headers or None)

    @app.post("/admin/api/{version}/orders/{order_id}/{action}.json")
    async def order_action(version: str, order_id: str, action: str, request: Request) -> Any:
        presented = request.headers.get("x-shopify-access-token", "")
        if not hmac.compare_digest(presented.encode(), access_token.encode()):
            return answer(
                request,
                401,
                {
                    "errors": "[API] Invalid API key or access token "
                    "(unrecognized login or wrong password)"
                },
            )
        if state.fail_next:
            status = state.fail_next.pop(0)
            headers = {"Retry-After": state.retry_after} if status == 429 else {}
            errors = "Exceeded 2 calls per second for api client." if status == 429 else "Error"
            return answer(request, status, {"errors": errors}, **headers)
        order = state.orders.get(order_id)
        if order is None or action not in ("close", "open", "cancel"):
            return answer(request, 404, {"errors": "Not Found"})
        now = datetime.now(UTC).isoformat()
        if action == "cancel":
            if order.get("closed_at"):
                return answer(request, 422, {"errors": {"base": ["Order is closed"]}})
            order["cancelled_at"] = now
        elif action == "close":
            order["closed_at"] = now
        else:
            order["closed_at"] = None
        state.applied.append((order_id, action))
        return answer(request, 200, {"order": order})

    return app


def create_woocommerce_stand_in(
    state: ShopState, consumer_key: str, consumer_secret: str
) -> FastAPI:
    app = FastAPI(title="WooCommerce REST v3 stand-in (not WooCommerce)")
    expected = base64.b64encode(f"{consumer_key}:{consumer_secret}".encode()).decode()

    def answer(request: Request, status: int, body: Any) -> JSONResponse:
        state.calls.append((request.method, request.url.path, status))
        return JSONResponse(body, status_code=status)

    def problem(request: Request, status: int, code: str, message: str) -> JSONResponse:
        return answer(
            request, status, {"code": code, "message": message, "data": {"status": status}}
        )

    @app.put("/wp-json/wc/v3/orders/{order_id}")
    async def update_order(order_id: str, request: Request) -> Any:
        presented = request.headers.get("authorization", "").removeprefix("Basic ")
        if not hmac.compare_digest(presented.encode(), expected.encode()):
            return problem(
                request, 401, "woocommerce_rest_authentication_error", "Consumer key is invalid."
            )
        if state.fail_next:
            status = state.fail_next.pop(0)
            return problem(request, status, "internal_server_error", "injected failure")
        order = state.orders.get(order_id)
        if order is None:
            return problem(request, 404, "woocommerce_rest_shop_order_invalid_id", "Invalid ID.")
        status_value = (await request.json()).get("status")
        if status_value not in WOO_STATUSES:
            return answer(
                request,
                400,
                {
                    "code": "rest_invalid_param",
                    "message": "Invalid parameter(s): status",
                    "data": {
                        "status": 400,
                        "params": {"status": f"status is not one of {', '.join(WOO_STATUSES)}."},
                    },
                },
            )
        order["status"] = status_value
        state.applied.append((order_id, status_value))
        return answer(request, 200, order)

    return app
