"""Every kind of source Ponte takes data from, declared in one place.

A kind says how its requests are signed, how its body is read, where a delivery's id and
its topic come from, how a topic names the resource, which default mapping it uses and
whether it can also be pulled or send files. Code that behaves differently per kind reads
these declarations, and where it must branch, it matches on ``body`` or ``signature``
exhaustively (``assert_never``), so a new value fails type-checking at every place that
has to handle it.

Adding a kind: a ``SourceKind`` member and its ``SOURCE_KINDS`` entry here (a missing
entry fails at import), its default mapping file under ``ponte/shared/mappings/``, and,
for a new body shape, its parser in ingest and adapter in the transform, where mypy points.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal


class SourceKind(StrEnum):
    ERP = "erp"
    SHOPIFY = "shopify"
    WOOCOMMERCE = "woocommerce"


SignatureScheme = Literal["standard_webhooks", "shopify_hmac", "woocommerce_hmac"]
"""Standard Webhooks (``webhook-id``/``-timestamp``/``-signature``), or an HMAC-SHA256 of
the body in one header (base64), as Shopify and WooCommerce send it."""

BodyShape = Literal["envelope", "shop_resource"]
"""Ponte's "table of tables" envelope (many records, child tables, codes), or one shop
resource named by a topic header (an order, a customer, a product)."""


@dataclass(frozen=True)
class SourceKindSpec:
    label: str
    signature: SignatureScheme
    body: BodyShape
    topic_header: str | None
    """The header naming what happened (shops); None: the envelope's ``table``."""
    delivery_id_headers: tuple[str, ...]
    """Headers holding the sender's delivery id, first present wins; empty: the
    envelope's ``id``. Without either, identical bodies count as one delivery."""
    topic_separator: str | None
    """Between resource and verb in a topic (``orders/create``, ``order.updated``)."""
    default_mapping: str
    """The shipped mapping file (``ponte/shared/mappings/<name>.yaml``)."""
    pulls_and_files: bool
    """Whether the kind can also be pulled on a schedule or send files (its rows are
    envelopes' rows)."""


SOURCE_KINDS: dict[SourceKind, SourceKindSpec] = {
    SourceKind.ERP: SourceKindSpec(
        label="ERP (Ponte's envelope)",
        signature="standard_webhooks",
        body="envelope",
        topic_header=None,
        delivery_id_headers=(),
        topic_separator=None,
        default_mapping="erp",
        pulls_and_files=True,
    ),
    SourceKind.SHOPIFY: SourceKindSpec(
        label="Shopify",
        signature="shopify_hmac",
        body="shop_resource",
        topic_header="x-shopify-topic",
        delivery_id_headers=("x-shopify-webhook-id", "x-shopify-event-id"),
        topic_separator="/",
        default_mapping="shopify",
        pulls_and_files=False,
    ),
    SourceKind.WOOCOMMERCE: SourceKindSpec(
        label="WooCommerce",
        signature="woocommerce_hmac",
        body="shop_resource",
        topic_header="x-wc-webhook-topic",
        delivery_id_headers=("x-wc-webhook-delivery-id",),
        topic_separator=".",
        default_mapping="woocommerce",
        pulls_and_files=False,
    ),
}
assert set(SOURCE_KINDS) == set(SourceKind), "every SourceKind needs its SOURCE_KINDS entry"


def spec_of(kind: SourceKind) -> SourceKindSpec:
    return SOURCE_KINDS[kind]


def resource_of(kind: SourceKind, topic: str) -> str:
    """The record's kind without the verb: ``orders/create`` -> ``orders``; an envelope's
    topic is its table, already a resource."""
    separator = SOURCE_KINDS[kind].topic_separator
    return topic.split(separator, 1)[0] if separator else topic


def verb_of(kind: SourceKind, topic: str) -> str:
    """What happened, from a topic: ``orders/delete`` -> ``delete``; empty for envelopes."""
    separator = SOURCE_KINDS[kind].topic_separator
    return topic.rsplit(separator, 1)[-1].lower() if separator else ""
