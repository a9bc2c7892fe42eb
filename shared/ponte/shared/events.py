"""The event envelopes: what an ERP sends (``ErpEnvelope``) and what travels on the raw
topic (``RawEvent``).

One webhook delivery can carry many records (an ERP envelope's ``rows``). Ingest writes one
``RawEvent`` per record, keyed ``source/table/record-key``, so every event of one record
lands in one partition and keeps its order; the delivery's id plus the row's position make
the record event's id, so a re-sent delivery produces the same ids and the transform can
recognise it.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from ponte.shared.source_kinds import SourceKind, resource_of

ERP_TIMEZONE = ZoneInfo("America/Sao_Paulo")
"""Local time of the ERPs Ponte was built for; a naive ``occurred_at`` is read in it."""

KEY_FIELD_CANDIDATES = ("codigo", "id", "chave", "cnpj", "cpf", "numero")
"""Fields tried, in order, for a row's record key when the source declares none."""

CODE_TABLE_NAMES = frozenset({"tabela de tabelas", "tabela_de_tabelas", "tabelas", "codigos"})
"""Names under which ERPs send the generic code table ("tabela de tabelas")."""


_BR_DATETIME = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?")


class Operation(StrEnum):
    UPSERT = "upsert"
    DELETE = "delete"


class ErpEnvelope(BaseModel):
    """Ponte's envelope for ERPs: one table's rows, possibly with nested child tables."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    id: str = Field(
        min_length=1,
        max_length=200,
        description="The source's event id; re-sent deliveries repeat it.",
    )
    occurred_at: datetime = Field(
        description="When the change happened at the source: ISO 8601 or "
        "dd/mm/yyyy[ HH:MM[:SS]]; without an offset it is America/Sao_Paulo time."
    )
    operation: Operation = Operation.UPSERT
    table: str = Field(
        min_length=1, max_length=120, description="The ERP's table name, as it writes it."
    )
    rows: list[dict[str, Any]] = Field(min_length=1, max_length=10_000)

    @field_validator("occurred_at", mode="before")
    @classmethod
    def _brazilian_date(cls, value: Any) -> Any:
        """ERPs in Brazil write ``dd/mm/yyyy[ HH:MM[:SS]]``; accept it beside ISO 8601."""
        if isinstance(value, str):
            match = _BR_DATETIME.fullmatch(value.strip())
            if match:
                day, month, year, hour, minute, second = (int(g or 0) for g in match.groups())
                return datetime(year, month, day, hour, minute, second)
        return value

    @field_validator("occurred_at")
    @classmethod
    def _local_time_when_naive(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=ERP_TIMEZONE)


class RawEvent(BaseModel):
    """One record's event on the raw topic, as ingest received it (nothing normalised yet)."""

    schema_version: Literal[1] = 1
    event_id: str = Field(description="Ponte's id of this record event: '<delivery id>/<index>'.")
    delivery_id: str = Field(description="Ponte's id of the webhook delivery, returned in the 202.")
    index: int
    count: int
    source_id: str
    source_kind: SourceKind
    source_event_id: str | None
    topic: str = Field(description="ERP table, or the shop's webhook topic (orders/create).")
    operation: Operation
    record_key: str
    occurred_at: AwareDatetime | None
    received_at: AwareDatetime
    payload: dict[str, Any]

    @property
    def partition_key(self) -> bytes:
        return partition_key(self.source_id, self.topic_resource, self.record_key)

    @property
    def topic_resource(self) -> str:
        """The record's kind without the verb: ``orders/create`` -> ``orders``."""
        return resource_of(self.source_kind, self.topic)


def partition_key(source_id: str, resource: str, record_key: str) -> bytes:
    return f"{source_id}/{resource}/{record_key}".encode()


HEADER_EVENT_ID = "ponte-event-id"
HEADER_SOURCE = "ponte-source"
HEADER_KIND = "ponte-kind"
HEADER_TOPIC = "ponte-topic"
"""The raw topic's identity headers, written by ingest's publisher. They are a contract
with the transform: a message whose value cannot be read at all is still dead-lettered
and listed under the source, event, table and record key these (and the key) carry."""


def delivery_id_for(source_id: str, dedup_key: str) -> str:
    """A deterministic id: the same delivery re-sent gets the same Ponte id."""
    digest = hashlib.sha256(f"{source_id}\x00{dedup_key}".encode()).hexdigest()
    return f"evt_{digest[:26]}"


def erp_record_key(table: str, row: dict[str, Any], key_fields: list[str] | None = None) -> str:
    """The ERP's own key of a row, used to keep one record's events in order.

    With ``key_fields`` (from the source's mapping: a child table's parent field, then its
    own key, e.g. ``pedido``, ``seq``) the key is all of them joined, as the transform
    keys the row. Without, code-table rows are keyed ``tabela:chave`` and other rows by the
    first of ``KEY_FIELD_CANDIDATES`` present. A row with none is keyed by its content's
    digest: still deterministic, but two versions of such a record may land in different
    partitions; the transform's version check keeps the result right regardless.
    """
    if key_fields:
        parts = [row.get(name) for name in key_fields]
        if all(p not in (None, "") and not isinstance(p, dict | list) for p in parts):
            return ":".join(str(p).strip() for p in parts)
    if table.strip().lower() in CODE_TABLE_NAMES and "tabela" in row and "chave" in row:
        return f"{row['tabela']}:{row['chave']}"
    for name in KEY_FIELD_CANDIDATES:
        value = row.get(name)
        if value not in (None, "") and not isinstance(value, dict | list):
            return str(value).strip()
    canonical = json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:32]
