"""Dates and times the ops API takes: ISO 8601 text, and nothing pydantic would also read.

The OpenAPI document says ``format: date-time``, but pydantic's lax datetime also takes a
number, or a numeric string, as Unix seconds: ``?until=0.5`` was an export up to 1970 and
``{"until": 0}`` a replay selection, both accepted although the document rules them out
(schemathesis, tests/test_openapi.py). ``Strict()`` cannot help: FastAPI validates
parsed values in Python mode, where strict refuses every string. So the text must look
like a date before pydantic reads it.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from pydantic import AwareDatetime, BeforeValidator

_ISO_DATE_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}")
EXAMPLE = "2024-11-14T12:00:00-03:00"


def iso_text(value: object) -> object:
    """``value`` unchanged if it is ISO 8601 date-and-time text (or already a datetime, as
    defaults are); a ``ValueError`` naming the expected form otherwise."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _ISO_DATE_TIME.match(value):
        raise ValueError(f"expected an ISO 8601 date and time, such as {EXAMPLE}")
    return value


IsoDatetime = Annotated[datetime, BeforeValidator(iso_text)]
"""With or without an offset (the export reads a time without one as São Paulo time)."""
IsoAwareDatetime = Annotated[AwareDatetime, BeforeValidator(iso_text)]
"""With an offset: a replay selection is compared with instants."""
