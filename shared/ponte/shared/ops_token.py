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


PLACEHOLDER_TOKENS = frozenset({"", "CHANGE_ME", "changeme"})
MIN_TOKEN_LENGTH = 16


def configured_token(settings: Settings) -> str:
    """``PONTE_OPS_TOKEN`` as every service reads it: trimmed (a Kubernetes Secret often
    ends in a newline); "" when unset, a placeholder or shorter than ``MIN_TOKEN_LENGTH``,
    and then no request matches it."""
    token = settings.ops_token.get_secret_value().strip() if settings.ops_token else ""
    return "" if token in PLACEHOLDER_TOKENS or len(token) < MIN_TOKEN_LENGTH else token


def token_matches(settings: Settings, presented: str) -> bool:
    expected = configured_token(settings)
    return bool(expected) and hmac.compare_digest(presented.strip().encode(), expected.encode())


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
