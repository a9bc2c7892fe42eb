"""Value rules shared by the transform's mapping files and deliver's property expressions,
so ``values``/``unknown``/``default`` and ``template`` mean the same on both sides.

Pure functions: no I/O, no model. They raise ``ParseError`` (a ``ValueError``) saying what
is wrong; the caller adds where (a table and field, or a target property)."""

from __future__ import annotations

import re
from typing import Any, Literal

from ponte.shared.parsers import ParseError

Unknown = Literal["refuse", "keep", "default"]
"""A value a value map does not list: refuse it, keep it as sent, or use ``default``."""

PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


def blank(value: Any) -> bool:
    """Absent or empty text: what ``default`` and ``required`` treat as no value."""
    return value is None or (isinstance(value, str) and not value.strip())


def map_value(value: Any, values: dict[str, Any], unknown: Unknown, default: Any) -> Any:
    """``value`` through a value map whose keys are compared as trimmed text (a number
    ``1`` matches ``"1"``); a blank value is left as it is (``default`` handles it)."""
    if blank(value):
        return value
    text = str(value).strip()
    if text in values:
        return values[text]
    if unknown == "refuse":
        raise ParseError(f"{text!r} is not one of the mapped values {sorted(values)}")
    return default if unknown == "default" else value


def fill_template(template: str, data: dict[str, Any]) -> str | None:
    """``template``'s ``{field}`` placeholders filled from ``data``: absent, empty or
    object/list fields leave their place empty, runs of spaces are folded; None when
    nothing is left (all the fields were empty)."""

    def part(match: re.Match[str]) -> str:
        value = data.get(match.group(1))
        if value is None or isinstance(value, dict | list):
            return ""
        return str(value).strip()

    text = " ".join(PLACEHOLDER.sub(part, template).split())
    return text or None
