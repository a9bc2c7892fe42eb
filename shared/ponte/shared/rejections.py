"""Why a request was refused: one exception carrying the HTTP answer and the reason."""

from __future__ import annotations

from typing import Any


class Rejection(Exception):
    """A request Ponte refuses; becomes a JSON error body and a history row.

    ``code`` is stable and machine-readable (``bad_signature``, ``ip_not_allowed``...);
    ``message`` is for the person reading the sender's logs and names the field or header
    at fault. Neither ever contains a secret or a signature. ``body()`` is the one error
    shape of every service (``ponte.shared.problems.Problem``); ``problems`` lists every
    invalid field of a request that fails validation.
    """

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        tables: list[str] | None = None,
        problems: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}
        self.tables = tables or []
        self.problems = problems

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        if self.problems:
            body["problems"] = self.problems
        return body
