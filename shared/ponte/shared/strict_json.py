"""The one JSON decoder at Ponte's edges, and the limits every accepted document rests on.

Ingest (webhooks, REST pulls) and the transform (raw events) read JSON only through
``loads``, so a document the edge accepted can always be stored and transformed, and a
document the transform would refuse is refused at the edge, with a 4xx the sender sees,
instead of being dead-lettered (or silently altered) later. What it refuses, and why:

- nesting deeper than ``MAX_DEPTH`` containers: the parsers, encoders and recursive code
  behind the edge (orjson's 254, pydantic's 200, Python's recursion limit, the
  transform's child tables) all have limits of their own, each well above this one;
- integers of more than ``MAX_INT_DIGITS`` digits and other numbers longer than
  ``MAX_NUMBER_CHARS`` characters: Python refuses to read integers beyond 4,300 digits
  (a ``ValueError``), and no column Ponte writes holds more than a ``numeric`` can;
- numbers that are not finite as a double (``1e999``, ``NaN``, ``Infinity``): they
  become ``inf``/``nan`` in Python and NULL in PostgreSQL, i.e. they are lost;
- lone surrogates (``"\\ud800"``): not Unicode, cannot be written as UTF-8, so neither
  PostgreSQL nor Kafka consumers can hold them;
- NUL (``"\\u0000"``) in any key or string: PostgreSQL text and JSONB cannot hold it,
  and stripping it would merge ``"X\\u0000Y"`` with ``"XY"``;
- duplicate keys in an object: readers disagree on which one wins (``"operation":
  "upsert"`` then ``"operation": "delete"``), so the sender's intent is ambiguous.

Every refusal is a ``JsonRefused`` naming the problem and where it is (a JSON path such
as ``$.rows[0].total``, or the line, column and offset of a syntax error).

Speed: ``orjson`` reads a typical webhook several times faster than Python's ``json``,
but it accepts duplicate keys (the last wins), NUL, any depth up to 1,024 and reads
integers beyond 64 bits as floats. So it is used only where its reading is provably the
strict one: bodies with no ``\\u0000`` escape, no 19-digit run that can be part of a
number, no ``\\u003a`` (an escaped colon), the same number of colons as orjson's own
re-encoding (an object member is exactly one colon outside strings, so a duplicate shows
as a missing colon) and no more containers than allowed. Everything else, and everything
orjson refuses, takes the strict path (``json.loads`` with hooks), which decides alone
and names the problem. ``tests/shared/test_strict_json.py`` checks both paths agree.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

MAX_DEPTH = 64
"""Containers (objects and arrays) nested at most this deep; the outermost is depth 1."""

RAW_EVENT_DEPTH = MAX_DEPTH + 1
"""A raw event wraps what the edge accepted in one more object (its ``payload``)."""

MAX_INT_DIGITS = 50
"""Integers have at most this many digits (a sign aside)."""

MAX_NUMBER_CHARS = 60
"""Other numbers (a fraction or an exponent) are at most this many characters long."""


class JsonRefused(ValueError):
    """A document the edge refuses: ``code`` is stable and machine-readable, ``message``
    names the problem and where it is, ``path`` is the JSON path (``$`` for the whole
    document) when the problem is a value, ``offset`` the position (byte of an encoding
    error, character of a syntax error) when it is not, ``status`` the HTTP status."""

    def __init__(
        self,
        code: str,
        message: str,
        path: str = "$",
        status: int = 422,
        offset: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.path = path
        self.status = status
        self.offset = offset


class _Refused:
    """What a parse hook returns for a literal it refuses: the walk after the parse
    raises it with the literal's path (the hooks themselves cannot know it)."""

    __slots__ = ("code", "what")

    def __init__(self, code: str, what: str) -> None:
        self.code = code
        self.what = what


class _Duplicated(dict[str, Any]):
    """An object that repeated a key (the parse hook marks it; the walk refuses it)."""

    duplicate: str = ""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) == len(pairs):
        return result
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            marked = _Duplicated(result)
            marked.duplicate = key
            return marked
        seen.add(key)
    raise AssertionError("unreachable: fewer keys than pairs means a repeated key")


def _int(literal: str) -> Any:
    digits = len(literal) - literal.startswith("-")
    if digits > MAX_INT_DIGITS:
        return _Refused(
            "number_too_large", f"an integer of {digits} digits (at most {MAX_INT_DIGITS})"
        )
    return int(literal)


def _float(literal: str) -> Any:
    if len(literal) > MAX_NUMBER_CHARS:
        return _Refused(
            "number_too_large",
            f"a number of {len(literal)} characters (at most {MAX_NUMBER_CHARS})",
        )
    value = float(literal)
    if not math.isfinite(value):
        return _Refused("non_finite_number", f"{literal} is beyond a double's range")
    return value


def _constant(name: str) -> Any:
    return _Refused("non_finite_number", f"{name} is not a JSON number")


def _path(trail: Any) -> str:
    """``$.rows[0].total`` from the walk's linked trail ``(parent, key)``; keys that are
    not plain names are quoted with every control character escaped."""
    parts: list[str] = []
    while trail is not None:
        trail, key = trail
        if isinstance(key, int):
            parts.append(f"[{key}]")
        elif key.isidentifier() and key.isascii():
            parts.append(f".{key}")
        else:
            parts.append(f"[{json.dumps(key)}]")
    path = "$" + "".join(reversed(parts))
    return path if len(path) <= 300 else path[:140] + "..." + path[-140:]


def _check_text(text: str, trail: Any, what: str) -> None:
    if "\x00" in text:
        raise JsonRefused("nul_character", f"{_path(trail)}: NUL (\\u0000) in {what}", _path(trail))
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            path = _path(trail)
            raise JsonRefused(
                "lone_surrogate",
                f"{path}: lone surrogate \\u{ord(text[error.start]):04x} in {what} "
                "(not Unicode text)",
                path,
            ) from None


_INT_LIMIT = 10**MAX_INT_DIGITS


def check_value(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Refuse ``value`` (parsed JSON, or a row built from a file or a pulled page) if it
    breaks a limit: depth, number size, non-finite numbers, NUL, lone surrogates, and
    the duplicate keys the strict parse marked. Depth first in document order, so the
    error names the first problem a reader of the document would meet."""
    stack: list[tuple[Any, int, Any]] = [(value, 0, None)]
    while stack:
        node, depth, trail = stack.pop()
        kind = type(node)
        if kind is str:
            _check_text(node, trail, "a string")
        elif kind is dict or kind is _Duplicated or kind is list:
            if depth + 1 > max_depth:
                path = _path(trail)
                raise JsonRefused(
                    "too_deep", f"{path}: nested deeper than {max_depth} levels", path
                )
            if kind is list:
                stack.extend(
                    (item, depth + 1, (trail, index))
                    for index, item in reversed(list(enumerate(node)))
                )
                continue
            if kind is _Duplicated:
                path = _path(trail)
                key = json.dumps(node.duplicate)
                raise JsonRefused(
                    "duplicate_key", f"{path}: key {key} appears more than once", path
                )
            for key in node:
                if type(key) is not str:
                    # Python values (rows built from files) may have other keys.
                    key = str(key)
                _check_text(key, (trail, key), "a key")
            stack.extend(
                (item, depth + 1, (trail, key)) for key, item in reversed(list(node.items()))
            )
        elif kind is _Refused:
            path = _path(trail)
            raise JsonRefused(node.code, f"{path}: {node.what}", path)
        elif kind is int:
            if not -_INT_LIMIT < node < _INT_LIMIT:
                path = _path(trail)
                raise JsonRefused(
                    "number_too_large",
                    f"{path}: an integer of more than {MAX_INT_DIGITS} digits",
                    path,
                )
        elif kind is float and not math.isfinite(node):
            path = _path(trail)
            raise JsonRefused("non_finite_number", f"{path}: {node} is not a finite number", path)
        elif isinstance(node, dict | list | tuple):  # subclasses, from Python callers
            stack.append((dict(node) if isinstance(node, dict) else list(node), depth, trail))


_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def _too_deep_at(text: str, max_depth: int) -> JsonRefused:
    """Where a document nests deeper than ``max_depth`` (only when ``json.loads``
    itself ran out of recursion, so there is no parsed value to name a path in)."""
    depth = 0
    for token in _TOKENS.finditer(text):
        char = token.group()[0]
        if char in "[{":
            depth += 1
            if depth > max_depth:
                return JsonRefused(
                    "too_deep",
                    f"nested deeper than {max_depth} levels at character {token.start()}",
                    offset=token.start(),
                )
        elif char in "]}":
            depth -= 1
    return JsonRefused("too_deep", f"nested deeper than {max_depth} levels")


def _strict(text: str, max_depth: int) -> Any:
    """Python's json with hooks that mark what the limits refuse; the walk decides."""
    try:
        value = json.loads(
            text.removeprefix("\ufeff"),
            object_pairs_hook=_object,
            parse_int=_int,
            parse_float=_float,
            parse_constant=_constant,
        )
    except json.JSONDecodeError as error:
        raise JsonRefused(
            "invalid_json",
            f"not JSON: {error.msg} at line {error.lineno} column {error.colno} "
            f"(character {error.pos})",
            status=400,
            offset=error.pos,
        ) from None
    except RecursionError:
        raise _too_deep_at(text, max_depth) from None
    check_value(value, max_depth)
    return value


_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_LONG_DIGITS = b"0" * 19
"""Every ASCII digit made ``0`` and everything else a space, then a search for 19 zeros:
C passes, far cheaper than a regular expression over the whole body ..."""
_BEFORE_NUMBER_DIGITS = frozenset(b"[:,.eE+- \t\r\n")
"""... and only at each run found, whether it can be part of a number literal: a
number's digit runs follow one of these bytes (or start the body); one in a string, such
as a 44-digit NF-e key, follows its quote."""


def _number_with_long_digits(body: bytes) -> bool:
    digits = body.translate(_DIGITS_AS_ZERO)
    start = digits.find(_LONG_DIGITS)
    while start != -1:
        if start == 0 or body[start - 1] in _BEFORE_NUMBER_DIGITS:
            return True
        end = digits.find(b" ", start)
        if end == -1:
            return False
        start = digits.find(_LONG_DIGITS, end)
    return False


def _fast(body: bytes, max_depth: int) -> tuple[bool, Any]:
    """orjson's reading, when it is certain to equal the strict one (module docstring)."""
    if b"\\u0000" in body or b"\\u003" in body or _number_with_long_digits(body):
        return False, None
    try:
        value = orjson.loads(body)
        if body.count(b":") != orjson.dumps(value).count(b":"):
            return False, None
    except orjson.JSONDecodeError:  # also orjson.JSONEncodeError: a TypeError
        return False, None
    except TypeError:
        return False, None
    if body.count(b"[") + body.count(b"{") > max_depth and _depth(value) > max_depth:
        return False, None
    return True, value


def _depth(value: Any) -> int:
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = node.values()
        elif not isinstance(node, list):
            continue
        deepest = max(deepest, depth)
        stack.extend((item, depth + 1) for item in node if isinstance(item, dict | list))
    return deepest


def loads(document: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """Parse a JSON document (bytes are UTF-8, a leading BOM allowed) or refuse it with
    a ``JsonRefused`` (module docstring). ``max_depth`` is ``MAX_DEPTH`` at the edge and
    ``RAW_EVENT_DEPTH`` for a raw event, which wraps what the edge accepted."""
    if isinstance(document, bytes):
        taken, value = _fast(document, max_depth)
        if taken:
            return value
        try:
            text = document.decode("utf-8")
        except UnicodeDecodeError as error:
            raise JsonRefused(
                "bad_encoding",
                f"not valid UTF-8 at byte {error.start}",
                status=400,
                offset=error.start,
            ) from None
        return _strict(text, max_depth)
    return _strict(document, max_depth)
