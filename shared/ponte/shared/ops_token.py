"""The ops token guarding every route that returns stored payloads or personal data, on
every service (the transform's rejections and parked references, deliver's deliveries):
``Authorization: Bearer <PONTE_OPS_TOKEN>``, compared in constant time.

Without a configured token these routes answer 401 too: a deployment that forgot the
setting exposes nothing. Probes, metrics and the OpenAPI document stay open (they hold no
data), and the webhooks are signed per source instead.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ponte.shared.rejections import Rejection
from ponte.shared.settings import Settings

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="PonteOpsToken",
    description="`Authorization: Bearer <PONTE_OPS_TOKEN>`",
)

UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"description": "No valid `Authorization: Bearer <PONTE_OPS_TOKEN>`."}
}


def token_matches(settings: Settings, presented: str) -> bool:
    expected = settings.ops_token.get_secret_value() if settings.ops_token else ""
    return bool(expected) and hmac.compare_digest(presented.encode(), expected.encode())


def unauthorized() -> Rejection:
    """The 401, answered in the one error shape by ``ponte.shared.problems``."""
    return Rejection(
        401,
        "unauthorized",
        "send the ops token as 'Authorization: Bearer <PONTE_OPS_TOKEN>'",
        field="authorization",
        headers={"WWW-Authenticate": "Bearer"},
    )


async def require_ops_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> None:
    settings: Settings = request.app.state.settings
    if credentials is None or not token_matches(settings, credentials.credentials):
        raise unauthorized()


OpsTokenRequired = Depends(require_ops_token)
"""For a router's or route's ``dependencies=[...]``."""
