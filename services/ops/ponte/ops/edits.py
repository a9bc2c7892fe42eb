"""Changing a source through the ops API (seed 001's editable fields, plus the ingest
settings an operator needs: active, secrets, IP allowlist, table filter).

The change is validated as a whole with ``SourceConfig`` before it is stored, so the API
can never write a source that ingest would then refuse to load. Ingest re-reads
``sources`` every ``sources_refresh_s`` (``ponte.ingest.registry``), so an edit takes effect
on every ingest replica within that time, without a restart. ``config_digest`` is left as
it is: the YAML file wins again only when the file itself changes.

Secret rotation: ``add_secret`` puts a new secret first and keeps the newest old one valid
(ingest accepts two at once), so senders can switch over without a failed delivery;
``retire_old_secrets`` then drops the old one.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import asyncpg
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Secret,
    StrictBool,
    StringConstraints,
    WithJsonSchema,
    field_validator,
)

from ponte.ops import audit
from ponte.ops.fingerprints import fingerprint
from ponte.ops.status import ops_settings
from ponte.shared.secret_box import SecretBox
from ponte.shared.sources import SourceConfig

MIN_SECRET_LENGTH = 16
_TEXT = r"[^\x00-\x1f\x7f]"
"""A character that is not a control character (PostgreSQL text cannot hold NUL)."""
_VISIBLE = r"[^\s\x00-\x1f\x7f]"
SigningSecret = Secret[
    Annotated[
        str,
        StringConstraints(
            min_length=MIN_SECRET_LENGTH, pattern=rf"^{_VISIBLE}({_TEXT}*{_VISIBLE})?$"
        ),
    ]
]
"""A new secret: its rules are in the schema (OpenAPI ``minLength`` and ``pattern``: no
whitespace at either end, no line break), so a client learns them from the document, not
from a 422. Masked like ``SecretStr`` in reprs and dumps."""
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(\.{_OCTET}){{3}}(/([0-9]|[12][0-9]|3[0-2]))?"
_H = "[0-9a-fA-F]{1,4}"
_IPV6_FORMS = (  # every way "::" may stand for zero groups, or none (RFC 4291 §2.2)
    rf"({_H}:){{7}}{_H}",
    rf"({_H}:){{1,7}}:",
    rf"({_H}:){{1,6}}:{_H}",
    rf"({_H}:){{1,5}}(:{_H}){{1,2}}",
    rf"({_H}:){{1,4}}(:{_H}){{1,3}}",
    rf"({_H}:){{1,3}}(:{_H}){{1,4}}",
    rf"({_H}:){{1,2}}(:{_H}){{1,5}}",
    rf"{_H}:(:{_H}){{1,6}}",
    rf":((:{_H}){{1,7}}|:)",
)
_IPV6 = rf"({'|'.join(_IPV6_FORMS)})(/([0-9]|[1-9][0-9]|1[01][0-9]|12[0-8]))?"
CIDR_PATTERN = rf"^({_IPV4}|{_IPV6})$"
"""An IPv4 or IPv6 address or network (host bits may be set: 10.1.2.3/8 is 10.0.0.0/8),
as OpenAPI ``pattern``; every text it matches, ``ipaddress.ip_network`` takes. Not in it:
netmask forms (10.0.0.0/255.0.0.0) and IPv4 inside IPv6 (::ffff:10.0.0.1)."""
Cidr = Annotated[
    str, WithJsonSchema({"type": "string", "pattern": CIDR_PATTERN, "examples": ["10.0.0.0/8"]})
]
"""The pattern is for the document; ``_cidrs`` checks, with a message a person can read."""
TableName = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=rf"^{_TEXT}*{_VISIBLE}{_TEXT}*$")
]
"""Something other than whitespace (which is trimmed) and no control character, in the
schema as in the check."""


class SourcePatch(BaseModel):
    """The fields a PATCH may carry; absent ones stay as they are. Booleans are strict
    (JSON true or false): ``"active": 0`` or ``"retire_old_secrets": "yes"`` is a 422, not
    a source switched off or secrets retired by a number."""

    model_config = ConfigDict(extra="forbid")

    active: StrictBool | None = None
    business_rule: str | None = Field(default=None, max_length=20_000, pattern=r"^[^\x00]*$")
    """Free text, line breaks included; no NUL (PostgreSQL text cannot hold it)."""
    max_silence_hours: float | None = Field(default=None, gt=0, le=24 * 90)
    deployment_status: Literal["in_progress", "completed"] | None = None
    add_secret: SigningSecret | None = Field(
        default=None,
        description=f"A new signing secret (at least {MIN_SECRET_LENGTH} characters, no "
        "whitespace at either end); the newest old secret stays valid until "
        "retire_old_secrets.",
        json_schema_extra={"writeOnly": True},
    )
    retire_old_secrets: StrictBool = False
    allowed_cidrs: list[Cidr] | None = Field(
        default=None, description="IP allowlist as CIDRs; empty list: any address."
    )
    tables: list[TableName] | None = Field(
        default=None, description="Tables (or shop topics) accepted; empty list: all."
    )

    @field_validator("allowed_cidrs")
    @classmethod
    def _cidrs(cls, cidrs: list[str] | None) -> list[str] | None:
        if cidrs is None:
            return None
        normalised = []
        for cidr in cidrs:
            try:
                normalised.append(str(ipaddress.ip_network(cidr.strip(), strict=False)))
            except ValueError:
                raise ValueError(f"{cidr!r} is not an IP network in CIDR form") from None
        return normalised

    @field_validator("tables")
    @classmethod
    def _tables(cls, tables: list[str] | None) -> list[str] | None:
        if tables is None:
            return None
        cleaned = [table.strip() for table in tables]
        if any(not table or len(table) > 200 for table in cleaned):
            raise ValueError("a table name is empty or longer than 200 characters")
        return cleaned


class UnknownSource(LookupError):
    pass


def _secret_view(secrets: list[str]) -> list[str]:
    return [fingerprint(secret) for secret in secrets]


async def apply_patch(
    pool: asyncpg.Pool, source_id: str, patch: SourcePatch, *, actor: str, box: SecretBox
) -> list[str]:
    """Store ``patch`` and its audit rows in one transaction; returns the fields changed.
    Raises ``UnknownSource``, or ``ValueError`` when the result is not a valid source."""
    now = datetime.now(UTC)
    async with pool.acquire() as connection, connection.transaction():
        row = await connection.fetchrow("SELECT * FROM sources WHERE id = $1 FOR UPDATE", source_id)
        if row is None:
            raise UnknownSource(source_id)
        source = {key: row[key] for key in SourceConfig.model_fields}
        source["secrets"] = box.open_all(source["secrets"])  # stored sealed
        ops = await ops_settings(connection, source_id)
        changes: list[tuple[str, Any, Any]] = []  # (field, old shown, new shown)

        def change(store: dict[str, Any], field: str, value: Any) -> None:
            if value is not None and store[field] != value:
                changes.append((field, store[field], value))
                store[field] = value

        change(source, "active", patch.active)
        change(source, "allowed_cidrs", patch.allowed_cidrs)
        change(source, "tables", patch.tables)
        change(ops, "business_rule", patch.business_rule)
        change(ops, "max_silence_hours", patch.max_silence_hours)
        change(ops, "deployment_status", patch.deployment_status)
        secrets = list(source["secrets"])
        if patch.add_secret is not None:
            new_secret = patch.add_secret.get_secret_value()
            if new_secret not in secrets:
                secrets = [new_secret, *secrets][:2]
        if patch.retire_old_secrets:
            secrets = secrets[:1]
        if secrets != source["secrets"]:
            changes.append(("secrets", _secret_view(source["secrets"]), _secret_view(secrets)))
            source["secrets"] = secrets
        SourceConfig.model_validate(source)  # what ingest will load must be valid
        if not changes:
            return []
        await connection.execute(
            "UPDATE sources SET active = $2, allowed_cidrs = $3, tables = $4, secrets = $5, "
            "updated_at = $6 WHERE id = $1",
            source_id,
            source["active"],
            source["allowed_cidrs"],
            source["tables"],
            box.seal_all(source["secrets"]),
            now,
        )
        await connection.execute(
            "INSERT INTO source_ops (source_id, business_rule, max_silence_hours, "
            "deployment_status, updated_at) VALUES ($1, $2, $3, $4, $5) "
            "ON CONFLICT (source_id) DO UPDATE SET business_rule = $2, "
            "max_silence_hours = $3, deployment_status = $4, updated_at = $5",
            source_id,
            ops["business_rule"],
            ops["max_silence_hours"],
            ops["deployment_status"],
            now,
        )
        for field, old, new in changes:
            await audit.record(
                connection, at=now, actor=actor, source_id=source_id, field=field, old=old, new=new
            )
    return [field for field, _, _ in changes]
