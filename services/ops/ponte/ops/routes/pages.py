"""The operations page: server-rendered HTML (Jinja2), no JavaScript build.

``/`` lists the sources with their status; ``/sources/{id}`` shows seed 001's "Informações
Gerais", the recent requests with their log downloads, the onboarding counts and the
"Histórico" download form (which GETs ``/ops/history/export`` with the session cookie).
The page only reads; changes go through the API with the bearer token (see ``auth``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Annotated, Any
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import pass_context
from jinja2.runtime import Context

from ponte.ops.auth import SESSION_COOKIE, SESSION_TTL_S, session_cookie, valid_session, valid_token
from ponte.ops.deps import BoxDep, PullsDep
from ponte.ops.onboarding import onboarding
from ponte.ops.status import source_ids, source_status
from ponte.shared.deps import PoolDep, SettingsDep
from ponte.shared.settings import Settings

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(resources.files("ponte.ops") / "templates"))

SEED_TABLES = (
    "Contato", "Cotacao", "Empresa", "Empresa marca", "Fatura", "Fornecedor", "Itens cotacao",
    "Itens nota", "Itens pedido", "Nota", "Pedido", "Vendedor",
)  # fmt: skip
"""The tables seed 001's "Histórico" offers, shown when a source has no table filter."""
MAX_LOGIN_BODY = 4096


def _zone(request: Request) -> ZoneInfo:
    settings: Settings = request.app.state.settings
    return ZoneInfo(settings.ops_timezone)


@pass_context
def _local(context: Context, moment: datetime | None) -> str:
    """A time as the consultant reads it: in ``PONTE_OPS_TIMEZONE`` (São Paulo by
    default), with its offset, so nobody has to guess the zone."""
    if moment is None:
        return "—"
    local = moment.astimezone(_zone(context["request"]))
    offset = local.strftime("%z")
    return f"{local:%Y-%m-%d %H:%M:%S} {offset[:3]}:{offset[3:]}"


templates.env.filters["local"] = _local


def _signed_in(request: Request) -> bool:
    """A session cookie from the login form, or the same bearer token the API takes."""
    token: str = request.app.state.ops_token
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and presented and valid_token(token, presented.strip()):
        return True
    return valid_session(token, request.cookies.get(SESSION_COOKIE))


def _to_login() -> RedirectResponse:
    return RedirectResponse("/login", status_code=303)


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request) -> Response:
    return templates.TemplateResponse(request, "login.html", {"error": None})


def _secure_cookie(request: Request, settings: Settings) -> bool:
    """``PONTE_OPS_COOKIE_SECURE``, or HTTPS seen directly. The scheme alone is not enough:
    behind the TLS ingress the app sees plain HTTP, and it does not believe
    X-Forwarded-Proto (``ponte.shared.http.server_config``)."""
    if settings.ops_cookie_secure is not None:
        return settings.ops_cookie_secure
    return request.url.scheme == "https"


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, settings: SettingsDep) -> Response:
    """The form posts the token once; the answer is a session cookie, never the token."""
    body = await request.body()
    presented = parse_qs(body[:MAX_LOGIN_BODY].decode(errors="replace")).get("token", [""])[0]
    if not valid_token(request.app.state.ops_token, presented):
        return templates.TemplateResponse(
            request, "login.html", {"error": "Token inválido."}, status_code=401
        )
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session_cookie(request.app.state.ops_token),
        max_age=SESSION_TTL_S,
        httponly=True,
        samesite="strict",
        secure=_secure_cookie(request, settings),
    )
    return response


@router.post("/logout")
async def logout(request: Request, settings: SettingsDep) -> Response:
    response = _to_login()
    # The same attributes as when it was set, so that every browser replaces it.
    response.delete_cookie(
        SESSION_COOKIE,
        httponly=True,
        samesite="strict",
        secure=_secure_cookie(request, settings),
    )
    return response


@router.get("/", response_class=HTMLResponse)
async def index(request: Request, pool: PoolDep, pulls: PullsDep, box: BoxDep) -> Response:
    if not _signed_in(request):
        return _to_login()
    sources = [
        status
        for source_id in await source_ids(pool)
        if (status := await source_status(pool, source_id, pulls=pulls, box=box)) is not None
    ]
    return templates.TemplateResponse(request, "index.html", {"sources": sources})


@router.get("/sources/{source_id}", response_class=HTMLResponse)
async def source_page(
    request: Request,
    source_id: Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")],
    pool: PoolDep,
    pulls: PullsDep,
    box: BoxDep,
    settings: SettingsDep,
) -> Response:
    if not _signed_in(request):
        return _to_login()
    status = await source_status(pool, source_id, pulls=pulls, box=box)
    if status is None:
        return templates.TemplateResponse(
            request, "missing.html", {"source_id": source_id}, status_code=404
        )
    progress = await onboarding(pool, source_id, settings.history_retention_days)
    now = datetime.now(UTC).astimezone(_zone(request)).replace(second=0, microsecond=0)
    context: dict[str, Any] = {
        "source": status,
        "onboarding": progress,
        "history_tables": status.tables or list(SEED_TABLES),
        "max_days": settings.history_max_days,
        "default_since": (now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M"),
        "default_until": (now + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M"),
    }
    return templates.TemplateResponse(request, "source.html", context)
