"""Who may use the ops API and page: one bearer token (``PONTE_OPS_TOKEN``).

The API takes ``Authorization: Bearer <token>``, compared in constant time. The page
cannot send a header on a plain link or form, so ``POST /login`` trades the token for a
session cookie: HttpOnly (no script reads it), SameSite=Strict (no other site's page can
make the browser send it), Secure (``PONTE_OPS_COOKIE_SECURE``: behind the TLS ingress the
app cannot see HTTPS itself), and holding an expiry signed with the token,
never the token itself; changing the token ends every session. The cookie is accepted for
GET only, so everything that changes state (PATCH, replay) needs the bearer token and
cannot be forged across sites.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials

from ponte.shared.ops_token import bearer, unauthorized

SESSION_COOKIE = "ponte_ops_session"
SESSION_TTL_S = 12 * 3600
"""A working day: long enough for an onboarding session, short enough to expire overnight."""

TOKEN_ACTOR = "ops-token"  # noqa: S105 - a name for the audit, not a secret
"""Who the audit names when a bearer request says nothing (no ``X-Ponte-Actor``)."""
PAGE_ACTOR = "ops-page"
_ACTOR = re.compile(r"^[\w .@+-]{1,100}$")


def _token(request: Request) -> str:
    token: str = request.app.state.ops_token
    return token


def _signature(token: str, expires: int) -> str:
    return hmac.new(
        token.encode(), f"ponte-ops-session:{expires}".encode(), hashlib.sha256
    ).hexdigest()


def session_cookie(token: str, now: float | None = None) -> str:
    """The cookie value for a session that ends ``SESSION_TTL_S`` from now."""
    expires = int((now or time.time()) + SESSION_TTL_S)
    return f"{expires}.{_signature(token, expires)}"


def valid_session(token: str, cookie: str | None, now: float | None = None) -> bool:
    if not cookie or "." not in cookie:
        return False
    expires_text, signature = cookie.split(".", 1)
    if not expires_text.isdigit() or int(expires_text) < (now or time.time()):
        return False
    return hmac.compare_digest(signature.encode(), _signature(token, int(expires_text)).encode())


def valid_token(token: str, presented: str) -> bool:
    return hmac.compare_digest(presented.encode(), token.encode())


async def require_operator(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> str:
    """The actor making the request, or 401. A bearer request is named by its
    ``X-Ponte-Actor`` header (a person's name or e-mail) when it sends a valid one."""
    token = _token(request)
    if credentials is not None and valid_token(token, credentials.credentials):
        actor = request.headers.get("x-ponte-actor", "").strip()
        return actor if _ACTOR.match(actor) else TOKEN_ACTOR
    if request.method == "GET" and valid_session(token, request.cookies.get(SESSION_COOKIE)):
        return PAGE_ACTOR
    raise unauthorized()


Operator = Annotated[str, Depends(require_operator)]
"""The name of who is calling, for the audit trail; declaring it requires a token."""
