"""Pydantic validation errors said one way everywhere: the field's path and the reason,
never the rejected input (it may be a secret, or a customer's personal data).

Every place that turns a ``ValidationError`` into words (a webhook's 422, a config file's
refusal at start, a dead letter's reason, an API's 422 body) goes through these."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ValidationError


def field_path(location: Sequence[int | str], default: str = "") -> str:
    """``("rows", 0, "codigo")`` -> ``rows.0.codigo``."""
    return ".".join(str(part) for part in location) or default


def first_problem(error: ValidationError, *, skip: int = 0, default: str = "") -> tuple[str, str]:
    """The first problem as (field path, reason); ``skip`` drops leading location steps
    (a discriminated union's tag)."""
    first = error.errors(include_input=False)[0]
    return field_path(first["loc"][skip:], default), first["msg"]


def every_problem(error: ValidationError) -> str:
    """All problems on one line: ``auth.token: Field required; rate_limit: ...``."""
    return "; ".join(
        f"{field_path(item['loc'])}: {item['msg']}" for item in error.errors(include_input=False)
    )
