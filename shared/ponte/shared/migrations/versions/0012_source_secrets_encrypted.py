"""Source secrets encrypted at rest: every plaintext ``sources.secrets`` entry sealed.

Each entry becomes ``fernet:<token>`` under the first key of ``PONTE_SECRETS_KEY``
(``ponte.shared.secret_box``); entries already sealed are left as they are, so running it
on a half-converted table is safe. Without a key it converts nothing and, if there is
something to convert, stops naming the setting: secrets are never left readable by a
migration that claims to have run. The downgrade opens them again (it needs the key too).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

from __future__ import annotations

import json
from collections.abc import Callable

import sqlalchemy as sa
from alembic import context, op

from ponte.shared.secret_box import SecretBox, is_sealed

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def _convert(wanted: Callable[[str], bool], change: Callable[[SecretBox, str], str]) -> None:
    connection = op.get_bind()
    rows = connection.execute(sa.text("SELECT id, secrets FROM sources")).all()
    todo = [(source_id, secrets) for source_id, secrets in rows if any(map(wanted, secrets))]
    if not todo:
        return
    key = context.config.attributes.get("secrets_key")
    if not key:
        raise RuntimeError(
            f"PONTE_SECRETS_KEY must be set to convert the secrets of {len(todo)} source(s) "
            "(`ponte secrets-key` prints a new key)"
        )
    box = SecretBox([part for part in key.split(",") if part.strip()])
    for source_id, secrets in todo:
        converted = [change(box, value) if wanted(value) else value for value in secrets]
        connection.execute(
            sa.text("UPDATE sources SET secrets = CAST(:secrets AS jsonb) WHERE id = :id"),
            {"secrets": json.dumps(converted), "id": source_id},
        )


def upgrade() -> None:
    _convert(lambda value: not is_sealed(value), SecretBox.seal)


def downgrade() -> None:
    _convert(is_sealed, SecretBox.open)
