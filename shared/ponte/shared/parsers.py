"""Value parsers for what ERPs and shops really send.

Brazilian ERPs write ``1.234,56`` for a decimal, ``14/11/2024`` for a date, local time in
America/Sao_Paulo, CNPJ and CPF with or without punctuation; shops write ``1234.56`` and
ISO 8601. Each parser takes the raw value and returns the typed value or ``None`` (empty
strings are missing values), or raises ``ParseError`` saying why, so the caller can name
the field.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from stdnum.br import cnpj as stdnum_cnpj
from stdnum.br import cpf as stdnum_cpf
from stdnum.exceptions import ValidationError as StdnumError

from ponte.shared.events import ERP_TIMEZONE


class ParseError(ValueError):
    """A value that cannot be read as its declared type; the message says why."""


_BR_THOUSANDS = re.compile(r"[+-]?\d{1,3}(\.\d{3})+")
_BR_DATE = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4})")
_BR_DATETIME = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4})[ T](\d{1,2}):(\d{2})(?::(\d{2}))?")
_TRUE = frozenset({"s", "sim", "y", "yes", "true", "t", "1", "ativo", "a", "v", "verdadeiro"})
_FALSE = frozenset({"n", "nao", "não", "no", "false", "f", "0", "inativo", "i"})


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _scalar(value: Any, kind: str) -> Any:
    if isinstance(value, dict | list):
        # The value named (cut), so the person sees what was sent, never stringified into
        # the column.
        shown = repr(value) if len(repr(value)) <= 80 else f"{repr(value)[:77]}..."
        raise ParseError(f"expected {kind}, got a JSON {type(value).__name__} {shown}")
    return value


def parse_text(value: Any) -> str | None:
    if _blank(value):
        return None
    text = str(_scalar(value, "text")).strip()
    return " ".join(text.split()) if "\n" not in text else text


def parse_decimal(value: Any) -> Decimal | None:
    """``1.234,56`` and ``617,28`` (Brazilian), ``1234.56`` (shops), numbers as they are.
    With a comma, dots are thousands separators; without one, ``1.234`` is one thousand two
    hundred and thirty-four (Brazilian thousands) and ``12.5`` is twelve and a half."""
    if _blank(value):
        return None
    value = _scalar(value, "a number")
    if isinstance(value, bool):
        raise ParseError("expected a number, got a boolean")
    if isinstance(value, int | float):
        text = repr(value)
    else:
        text = str(value).strip().replace(" ", "").replace("R$", "")
        if "," in text:
            text = text.replace(".", "").replace(",", ".")
        elif _BR_THOUSANDS.fullmatch(text):
            text = text.replace(".", "")
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise ParseError(f"{value!r} is not a number") from None
    if not number.is_finite():
        raise ParseError(f"{value!r} is not a finite number")
    return number


def parse_number(value: Any) -> Decimal | None:
    """A decimal with a point and no thousands separators (``1500.00``), as shops write
    them: no Brazilian reading, so ``1.500`` is one and a half."""
    if _blank(value):
        return None
    value = _scalar(value, "a number")
    if isinstance(value, bool):
        raise ParseError("expected a number, got a boolean")
    try:
        number = Decimal(repr(value) if isinstance(value, float) else str(value).strip())
    except InvalidOperation:
        raise ParseError(f"{value!r} is not a number") from None
    if not number.is_finite():
        raise ParseError(f"{value!r} is not a finite number")
    return number


def parse_integer(value: Any) -> int | None:
    number = parse_decimal(value)
    if number is None:
        return None
    if number != number.to_integral_value():
        raise ParseError(f"{value!r} is not a whole number")
    return int(number)


def parse_date(value: Any) -> date | None:
    """``14/11/2024`` or ISO ``2024-11-14`` (a datetime's date part is accepted)."""
    if _blank(value):
        return None
    text = str(_scalar(value, "a date")).strip()
    try:
        match = _BR_DATE.fullmatch(text)
        if match:
            day, month, year = (int(part) for part in match.groups())
            return date(year, month, day)
        if _BR_DATETIME.fullmatch(text):
            parsed = parse_datetime(text)
            return parsed.date() if parsed else None
        return date.fromisoformat(text[:10]) if len(text) >= 10 else date.fromisoformat(text)
    except ValueError:
        raise ParseError(f"{text!r} is not a date (dd/mm/yyyy or yyyy-mm-dd)") from None


def parse_datetime(value: Any) -> datetime | None:
    """``dd/mm/yyyy[ HH:MM[:SS]]`` or ISO 8601; without an offset, America/Sao_Paulo."""
    if _blank(value):
        return None
    text = str(_scalar(value, "a date and time")).strip()
    try:
        match = _BR_DATETIME.fullmatch(text)
        if match:
            day, month, year, hour, minute = (int(part) for part in match.groups()[:5])
            second = int(match.group(6) or 0)
            parsed = datetime(year, month, day, hour, minute, second)
        elif _BR_DATE.fullmatch(text):
            parsed_date = parse_date(text)
            assert parsed_date is not None
            parsed = datetime.combine(parsed_date, time())
        else:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ParseError(
            f"{text!r} is not a date and time (dd/mm/yyyy HH:MM[:SS] or ISO 8601)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=ERP_TIMEZONE)


def parse_boolean(value: Any) -> bool | None:
    if _blank(value):
        return None
    value = _scalar(value, "yes/no")
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ParseError(f"{value!r} is not yes/no (S/N, sim/não, true/false, 1/0)")


def parse_cnpj(value: Any) -> str | None:
    """A CNPJ (numeric or the alphanumeric form valid from July 2026), check digits
    validated, stored without punctuation."""
    if _blank(value):
        return None
    try:
        return str(stdnum_cnpj.validate(str(_scalar(value, "a CNPJ")).strip()))
    except StdnumError as error:
        raise ParseError(f"{value!r} is not a valid CNPJ ({error})") from None


def parse_cpf(value: Any) -> str | None:
    if _blank(value):
        return None
    try:
        return str(stdnum_cpf.validate(str(_scalar(value, "a CPF")).strip()))
    except StdnumError as error:
        raise ParseError(f"{value!r} is not a valid CPF ({error})") from None


def parse_document(value: Any) -> str | None:
    """A CPF (11 digits) or a CNPJ (14 characters), whichever the value is."""
    if _blank(value):
        return None
    compact = re.sub(r"[\s./-]", "", str(_scalar(value, "a CPF or CNPJ")))
    return parse_cpf(compact) if len(compact) == 11 else parse_cnpj(compact)


def parse_email(value: Any) -> str | None:
    text = parse_text(value)
    if text is None:
        return None
    if text.count("@") != 1 or "." not in text.split("@")[1] or " " in text:
        raise ParseError(f"{text!r} is not an e-mail address")
    return text.lower()


NumberFormat = Literal["br", "us", "plain"]
"""How a field writes numbers when its mapping says so: ``br`` ``1.234,56`` (dots group
thousands, a comma marks decimals), ``us`` ``1,234.56``, ``plain`` ``1234.56`` (no
grouping: ``1.234`` is one point two three four)."""


def parse_us_number(value: Any) -> Decimal | None:
    """``1,234.56``: commas group thousands, a point marks decimals."""
    if isinstance(value, str):
        value = value.strip().replace(" ", "").replace("$", "").replace(",", "")
    return parse_number(value)


NUMBER_PARSERS: dict[str, Callable[[Any], Decimal | None]] = {
    "br": parse_decimal,
    "us": parse_us_number,
    "plain": parse_number,
}


def as_integer(number: Decimal | None, value: Any) -> int | None:
    if number is None:
        return None
    if number != number.to_integral_value():
        raise ParseError(f"{value!r} is not a whole number")
    return int(number)


def parse_with_format(value: Any, date_format: str, *, with_time: bool) -> date | datetime | None:
    """A date or time in a field's own ``strftime`` format (``%d.%m.%Y``, ``%Y%m%d``); a
    time without an offset is read in America/Sao_Paulo, like every ERP time."""
    if _blank(value):
        return None
    text = str(_scalar(value, "a date")).strip()
    try:
        parsed = datetime.strptime(text, date_format)
    except ValueError:
        raise ParseError(f"{text!r} does not match the date format {date_format!r}") from None
    if not with_time:
        return parsed.date()
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=ERP_TIMEZONE)


PARSERS: dict[str, Callable[[Any], Any]] = {
    "text": parse_text,
    "integer": parse_integer,
    "decimal": parse_decimal,
    "number": parse_number,
    "date": parse_date,
    "datetime": parse_datetime,
    "boolean": parse_boolean,
    "cnpj": parse_cnpj,
    "cpf": parse_cpf,
    "document": parse_document,
    "email": parse_email,
}
"""Every value type a mapping file may name."""
