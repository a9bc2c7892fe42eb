"""File drops, the last resort (issue #6): a CSV or Excel sheet of one ERP table becomes
the record events a webhook of that table would have produced.

The first line is the header (the envelope's field names, as the source's mapping knows
them); each following line is one row. Rows are checked one by one, and the report names
each refused row by its line number as a spreadsheet shows it (the header is row 1), the
field and the reason:

- an empty row between filled ones (trailing empty rows, which Excel leaves behind, are
  ignored);
- more cells than the header has columns;
- a key field of the table (from the source's mapping) missing;
- a value that the mapping's type for the field cannot read (``1.234,56`` for a decimal is
  fine, ``abc`` is not; dates ``dd/mm/yyyy``): the same parsers the transform uses, so a
  row accepted here is not refused there for its types.

CSV: the delimiter is the one the header line uses most among ``;`` (usual in Brazil, where
the comma is the decimal mark), ``,``, tab and ``|``; the encoding is the declared charset,
else UTF-8 (with or without BOM), else Windows-1252 / Latin-1 (older ERPs and Excel on
Windows). Excel (.xlsx): the first sheet, or the one named, read with openpyxl in read-only
mode; numbers stay numbers (a whole float becomes an integer, so code 1001 is not
``1001.0``) and dates become ISO text.

The whole file is one delivery whose id comes from the file's digest, and each row's event
id from its row number: the same file dropped twice produces the same ids, and the transform
recognises the second as a duplicate.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any

from ponte.shared import strict_json
from ponte.shared.events import Operation, RawEvent, delivery_id_for, erp_record_key
from ponte.shared.parsers import PARSERS, ParseError
from ponte.shared.rejections import Rejection
from ponte.shared.source_kinds import SourceKind

XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CSV_TYPES = frozenset({"text/csv", "application/csv", "text/plain"})
CSV_DELIMITERS = (";", ",", "\t", "|")
"""In order of preference on a tie: ``;`` first, Brazil's usual CSV delimiter."""
MAX_ROWS = 100_000


@dataclass(frozen=True)
class RowProblem:
    row: int
    field: str | None
    reason: str

    def public(self) -> dict[str, Any]:
        return {"row": self.row, "field": self.field, "reason": self.reason}


@dataclass
class FileDrop:
    delivery_id: str
    events: list[RawEvent] = field(default_factory=list)
    rejected: list[RowProblem] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        return {
            "delivery_id": self.delivery_id,
            "accepted": len(self.events),
            "rejected": [problem.public() for problem in self.rejected],
        }


Sheet = tuple[list[str], list[tuple[int, list[Any]]]]
"""The header, and each data row with its row number (header = row 1)."""


def _invalid_file(message: str, field_name: str = "file") -> Rejection:
    return Rejection(422, "invalid_file", message, field=field_name)


def file_kind(content_type: str | None, content: bytes, filename: str | None = None) -> str:
    """``csv`` or ``xlsx``, from the declared type, then the file's name, then its bytes
    (an .xlsx is a zip: it starts with ``PK``)."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media == XLSX_TYPE or (filename or "").lower().endswith(".xlsx"):
        return "xlsx"
    if media in CSV_TYPES or (filename or "").lower().endswith((".csv", ".txt")):
        return "csv"
    if content.startswith(b"PK\x03\x04"):
        return "xlsx"
    if media in ("", "application/octet-stream"):
        return "csv"
    raise Rejection(
        415,
        "unsupported_file_type",
        f"Content-Type {media!r} is neither text/csv nor {XLSX_TYPE}",
        field="content-type",
    )


def _declared_charset(content_type: str | None) -> str | None:
    for parameter in (content_type or "").split(";")[1:]:
        name, _, value = parameter.strip().partition("=")
        if name.strip().lower() == "charset" and value:
            try:
                return codecs.lookup(value.strip().strip('"')).name
            except LookupError:
                raise Rejection(
                    415,
                    "unknown_charset",
                    f"charset {value.strip()!r} is unknown",
                    field="content-type",
                ) from None
    return None


def decode_text(content: bytes, content_type: str | None) -> str:
    declared = _declared_charset(content_type)
    if declared is not None:
        try:
            return content.decode(declared).removeprefix("\ufeff")
        except UnicodeDecodeError as error:
            raise _invalid_file(f"file is not valid {declared} at byte {error.start}") from None
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return content.decode(encoding)
        except UnicodeDecodeError:
            continue
    return content.decode("latin-1")  # every byte is a Latin-1 character


def sniff_delimiter(text: str) -> str:
    header = next((line for line in text.splitlines() if line.strip()), "")
    counts = {delimiter: header.count(delimiter) for delimiter in CSV_DELIMITERS}
    best = max(CSV_DELIMITERS, key=lambda delimiter: counts[delimiter])
    return best if counts[best] else ";"


def read_csv(content: bytes, content_type: str | None, delimiter: str | None = None) -> Sheet:
    """``delimiter`` when the sender says it (an FTP pull's configuration), else sniffed."""
    text = decode_text(content, content_type)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter or sniff_delimiter(text))
    try:
        lines = [[cell.strip() for cell in line] for line in reader]
    except csv.Error as error:
        raise _invalid_file(f"file is not CSV: {error} (line {reader.line_num})") from None
    return _split_header(lines)


def _cell(value: Any) -> Any:
    """An Excel cell as the JSON an ERP would send."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, datetime):
        return value.date().isoformat() if value.time() == time() else value.isoformat()
    if isinstance(value, date | time):
        return value.isoformat()
    return value


def read_xlsx(content: bytes, sheet: str | None = None) -> Sheet:
    from openpyxl import load_workbook  # type: ignore[import-untyped]  # no stubs shipped

    try:
        workbook = load_workbook(io.BytesIO(content), read_only=True, data_only=True)
    except (zipfile.BadZipFile, OSError, KeyError, ValueError) as error:
        raise _invalid_file(f"file is not an Excel workbook (.xlsx): {error}") from None
    try:
        if sheet is not None and sheet not in workbook.sheetnames:
            raise _invalid_file(
                f"no sheet {sheet!r} (sheets: {', '.join(workbook.sheetnames)})", "sheet"
            )
        worksheet = workbook[sheet] if sheet is not None else workbook.worksheets[0]
        lines = [[_cell(value) for value in row] for row in worksheet.iter_rows(values_only=True)]
    finally:
        workbook.close()
    return _split_header(lines)


def _empty(value: Any) -> bool:
    return value is None or value == ""


def _split_header(lines: list[list[Any]]) -> Sheet:
    numbered = [(number, line) for number, line in enumerate(lines, start=1)]
    while numbered and all(_empty(value) for value in numbered[-1][1]):
        numbered.pop()  # Excel and editors leave empty rows at the end
    while numbered and all(_empty(value) for value in numbered[0][1]):
        numbered.pop(0)
    if not numbered:
        raise _invalid_file("file is empty: expected a header line and rows")
    header_number, header_cells = numbered[0]
    header = [str(value).strip() if not _empty(value) else "" for value in header_cells]
    while header and header[-1] == "":
        header.pop()
    seen: set[str] = set()
    for column, name in enumerate(header, start=1):
        if not name:
            raise _invalid_file(f"header (row {header_number}) column {column} has no name")
        if name in seen:
            raise _invalid_file(f"header (row {header_number}) names {name!r} twice")
        seen.add(name)
    rows = numbered[1:]
    if len(rows) > MAX_ROWS:
        raise _invalid_file(f"file has {len(rows)} rows; at most {MAX_ROWS} per file")
    return header, rows


def check_row(
    number: int,
    header: list[str],
    cells: list[Any],
    key_fields: list[str],
    field_types: Mapping[str, str],
) -> tuple[dict[str, Any] | None, list[RowProblem]]:
    """The row as an envelope row, or every problem found in it."""
    if all(_empty(value) for value in cells):
        return None, [RowProblem(number, None, "empty row")]
    extra = [value for value in cells[len(header) :] if not _empty(value)]
    if extra:
        return None, [
            RowProblem(
                number,
                None,
                f"{len(header) + len(extra)} cells but the header has {len(header)} columns",
            )
        ]
    row = {
        name: (cells[index] if index < len(cells) and not _empty(cells[index]) else None)
        for index, name in enumerate(header)
    }
    try:
        # The webhooks' limits (strict_json): a NUL in a cell or a column name would be
        # refused by the transform, so it is a problem of the row here, by name.
        strict_json.check_value(row)
    except strict_json.JsonRefused as refused:
        return None, [RowProblem(number, None, f"row {refused.message}")]
    problems = [
        RowProblem(number, name, "key field is empty")
        for name in key_fields
        if row.get(name) is None
    ]
    for name, value in row.items():
        kind = field_types.get(name, "text")
        if value is None or kind == "text":
            continue
        try:
            PARSERS[kind](value)
        except ParseError as error:
            problems.append(RowProblem(number, name, f"not a valid {kind}: {error}"))
    return (None, problems) if problems else (row, [])


def build_drop(
    *,
    source_id: str,
    table: str,
    sheet: Sheet,
    digest: str,
    key_fields: list[str],
    field_types: Mapping[str, str],
    operation: Operation,
    occurred_at: datetime,
    received_at: datetime,
) -> FileDrop:
    """Check every row; the accepted ones become record events of one delivery."""
    header, rows = sheet
    delivery_id = delivery_id_for(source_id, f"file:{table}:{digest}")
    drop = FileDrop(delivery_id)
    accepted: list[tuple[int, dict[str, Any]]] = []
    for number, cells in rows:
        row, problems = check_row(number, header, cells, key_fields, field_types)
        drop.rejected.extend(problems)
        if row is not None:
            accepted.append((number, row))
    drop.events = [
        RawEvent(
            event_id=f"{delivery_id}/{number}",
            delivery_id=delivery_id,
            index=number,
            count=len(rows),
            source_id=source_id,
            source_kind=SourceKind.ERP,
            # Ties on occurred_at: a later row of the file wins, as in an envelope.
            source_event_id=f"file-{digest[:24]}",
            topic=table,
            operation=operation,
            record_key=erp_record_key(table, row, key_fields or None),
            occurred_at=occurred_at,
            received_at=received_at,
            payload=row,
        )
        for number, row in accepted
    ]
    return drop


def read_sheet(
    content: bytes,
    content_type: str | None,
    filename: str | None,
    sheet: str | None,
    delimiter: str | None = None,
) -> Sheet:
    if file_kind(content_type, content, filename) == "xlsx":
        return read_xlsx(content, sheet)
    return read_csv(content, content_type, delimiter)


def file_digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()
