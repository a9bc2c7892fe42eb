"""Where an unreadable rejected message stands, and warnings on a request.

``transform_rejections.raw``: for a message whose value is not a readable raw event, its
bytes (base64, cut) and the topic/partition/offset that hold them whole; its identity
comes from the Kafka headers and key. ``webhook_requests.warnings``: what was accepted
but looked wrong (a body declared in a single-byte charset that is really UTF-8);
``sources.charset``: whether such a body is accepted with that warning or refused.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("transform_rejections", sa.Column("raw", pg.JSONB(), nullable=True))
    op.add_column(
        "sources",
        sa.Column("charset", sa.String(length=16), server_default="warn", nullable=False),
    )
    op.add_column(
        "webhook_requests",
        sa.Column("warnings", pg.ARRAY(sa.Text()), server_default="{}", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("webhook_requests", "warnings")
    op.drop_column("sources", "charset")
    op.drop_column("transform_rejections", "raw")
