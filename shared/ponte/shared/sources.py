"""Sources: the systems that send webhooks, configured in YAML and kept in PostgreSQL.

The YAML file is loaded at start. A source missing from the database is created; one whose
YAML entry changed since it was last applied is updated; otherwise the database row wins,
so a change made through the ops API survives a restart until the file itself changes.
Secrets may be written as ``${ENV_VAR}`` so the file can live in git and the secrets in a
Kubernetes Secret. In PostgreSQL they are stored encrypted (``ponte.shared.secret_box``):
``apply_sources`` seals them and ``fetch_sources`` opens them, with the box built from
``PONTE_SECRETS_KEY``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ponte.shared.config_files import load_entries
from ponte.shared.secret_box import SecretBox
from ponte.shared.source_kinds import SourceKind
from ponte.shared.validation_errors import every_problem

log = logging.getLogger(__name__)

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class SourceConfig(BaseModel):
    """One source's settings, as written in the YAML file and stored in ``sources``."""

    # Errors name the field but never echo the input: it holds the secrets.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    kind: SourceKind
    active: bool = True
    display_name: str = ""
    erp_name: str | None = None
    erp_version: str | None = None
    secrets: list[str] = Field(
        min_length=1,
        max_length=2,
        repr=False,
        description="Signing secrets; two are valid at once during a rotation.",
    )
    allowed_cidrs: list[str] = Field(default_factory=list, description="Empty: any address.")
    trusted_proxies: list[str] | None = Field(
        default=None,
        description="Proxies whose X-Forwarded-For is believed; None: the global default.",
    )
    tables: list[str] = Field(
        default_factory=list,
        description="Tables (ERP) or topics/resources (shops) this source may send; empty: all.",
    )
    charset: Literal["warn", "strict"] = Field(
        default="warn",
        description="A body declared in a single-byte charset (ISO-8859-1, cp1252) that is "
        "valid UTF-8 with multi-byte sequences is probably mis-declared: warn (accept, "
        "decoded as declared, with a warning in the history) or strict (refuse it, 415).",
    )

    @field_validator("secrets")
    @classmethod
    def _secrets_not_empty(cls, secrets: list[str]) -> list[str]:
        if any(not secret.strip() for secret in secrets):
            raise ValueError("a secret is empty (is its ${ENV_VAR} set?)")
        return secrets

    @field_validator("allowed_cidrs", "trusted_proxies")
    @classmethod
    def _valid_networks(cls, cidrs: list[str] | None) -> list[str] | None:
        for cidr in cidrs or []:
            ipaddress.ip_network(cidr, strict=False)  # raises ValueError naming the bad value
        return cidrs

    def digest(self) -> str:
        values = self.model_dump(mode="json")
        if values["charset"] == "warn":
            # Left out at its default, so adding the setting did not change every stored
            # digest (which would have let the file overwrite ops edits once).
            del values["charset"]
        canonical = json.dumps(values, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def networks(self) -> list[IpNetwork]:
        return [ipaddress.ip_network(cidr, strict=False) for cidr in self.allowed_cidrs]

    def allows_table(self, table: str) -> bool:
        """A filter entry matches the exact table/topic or, for shops, its resource
        (``orders`` allows ``orders/create`` and ``orders/updated``)."""
        if not self.tables:
            return True
        wanted = table.strip().lower()
        for allowed in self.tables:
            entry = allowed.strip().lower()
            if wanted == entry or wanted.startswith(entry + "/") or wanted.startswith(entry + "."):
                return True
        return False


def load_sources_file(path: Path) -> list[SourceConfig]:
    """Parse and validate the sources YAML; errors name the source and the field."""
    configs = []
    for index, entry in enumerate(load_entries(path, "sources")):
        try:
            configs.append(SourceConfig.model_validate(entry))
        except ValidationError as error:
            name = entry.get("id", "?") if isinstance(entry, dict) else "?"
            raise ValueError(f"{path}: sources[{index}] ({name}): {every_problem(error)}") from None
    ids = [config.id for config in configs]
    if len(ids) != len(set(ids)):
        raise ValueError(f"{path}: a source id appears twice")
    return configs


_COLUMNS = (
    "id",
    "kind",
    "active",
    "display_name",
    "erp_name",
    "erp_version",
    "secrets",
    "allowed_cidrs",
    "trusted_proxies",
    "tables",
    "charset",
)


async def apply_sources(
    pool: asyncpg.Pool, configs: list[SourceConfig], box: SecretBox
) -> dict[str, str]:
    """Store the file's sources, secrets sealed by ``box``; returns what happened to each
    (created/updated/kept)."""
    outcome: dict[str, str] = {}
    now = datetime.now(UTC)
    async with pool.acquire() as connection, connection.transaction():
        for config in configs:
            digest = config.digest()
            stored = await connection.fetchval(
                "SELECT config_digest FROM sources WHERE id = $1 FOR UPDATE", config.id
            )
            values = config.model_dump(mode="json")
            values["secrets"] = box.seal_all(config.secrets)
            if stored is None and not await connection.fetchval(
                "SELECT 1 FROM sources WHERE id = $1", config.id
            ):
                await connection.execute(
                    f"INSERT INTO sources ({', '.join(_COLUMNS)}, config_digest, created_at, "  # noqa: S608 - fixed column names
                    "updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$13)",
                    *(values[column] for column in _COLUMNS),
                    digest,
                    now,
                )
                outcome[config.id] = "created"
            elif stored != digest:
                assignments = ", ".join(
                    f"{column} = ${i + 2}" for i, column in enumerate(_COLUMNS[1:])
                )
                await connection.execute(
                    f"UPDATE sources SET {assignments}, config_digest = $12, updated_at = $13 "  # noqa: S608
                    "WHERE id = $1",
                    *(values[column] for column in _COLUMNS),
                    digest,
                    now,
                )
                outcome[config.id] = "updated"
            else:
                outcome[config.id] = "kept"
    log.info("sources applied", extra={"sources": outcome})
    return outcome


async def fetch_sources(pool: asyncpg.Pool, box: SecretBox | None) -> dict[str, SourceConfig]:
    """Every valid source, secrets opened by ``box``. A row that does not validate
    (edited by hand in the database, or a secret no key decrypts) is logged and left out
    rather than stopping every other source's refresh.

    ``box=None`` is for readers that never sign or verify (a pull's source check, a file
    drop's table filter): the secrets stay sealed, so nothing there holds them in clear."""
    rows = await pool.fetch(f"SELECT {', '.join(_COLUMNS)} FROM sources")  # noqa: S608
    sources = {}
    for row in rows:
        try:
            values = dict(row)
            if box is not None:
                values["secrets"] = box.open_all(values["secrets"])
            sources[row["id"]] = SourceConfig.model_validate(values)
        except ValueError as error:
            log.error(
                "invalid source in the database; ignored",
                extra={"source": row["id"], "error": str(error)[:300]},
            )
    return sources


async def reseal_sources(pool: asyncpg.Pool, box: SecretBox) -> int:
    """Re-encrypt every stored secret under ``box``'s first key (a key rotation: the new
    key first in PONTE_SECRETS_KEY, this, then the old key dropped); returns the rows."""
    async with pool.acquire() as connection, connection.transaction():
        rows = await connection.fetch("SELECT id, secrets FROM sources FOR UPDATE")
        for row in rows:
            await connection.execute(
                "UPDATE sources SET secrets = $2 WHERE id = $1",
                row["id"],
                [box.reseal(value) for value in row["secrets"]],
            )
    return len(rows)
