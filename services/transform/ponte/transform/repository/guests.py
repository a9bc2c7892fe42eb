"""A shop's guest contact and its registered contact become one, in either arrival order.

A guest (an order without a customer) is a contact keyed ``guest:<e-mail>``
(``ponte.transform.shops.guest_key``); a registered customer is keyed by its shop id. The
domain has one person behind both, so before a batch is written:

1. **A registered contact exists** (stored and not deleted, or upserted in this batch)
   with the guest's e-mail, for the same source: the guest contact record is dropped and
   every reference to it in the batch (the order's ``contact_id``) is pointed at the
   registered contact's key instead. Several registered contacts with one e-mail (shops
   keep e-mails unique per account, so only after an e-mail change): the oldest row.
2. **The guest came first**: a registered contact is upserted with an e-mail whose guest
   row is stored, and the registered key has no row yet: the guest row is re-keyed to the
   registered key, its version cleared so the customer's record (newer than nothing)
   overwrites it. Rows that pointed at the guest (its orders) point at the registered
   contact without being rewritten: they hold the row's id, which did not change.

Why re-key rather than tombstone the guest and re-point its orders: re-pointing would
need new versions on orders that did not change at the source (deliver skips a change
whose version it has delivered), and a re-keyed row keeps its id. What it costs: deliver
knows the CRM record by (entity, source, key), so the registered contact reaches the CRM
as a new record unless the target matches contacts by a natural key (the e-mail), which
then finds the guest's CRM record and updates it. Not handled (left as two contacts): a
guest whose e-mail a registered contact that is already stored takes on later (two stored
rows would have to be merged).

This module reads and re-keys contact rows only; references are still resolved by key by
``references`` (nothing here depends on how).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from ponte.shared.crm_model import crm_model
from ponte.shared.events import Operation
from ponte.transform.normalize import NormalizedRecord
from ponte.transform.repository.state import BatchState
from ponte.transform.shops import GUEST_PREFIX, guest_key

log = logging.getLogger(__name__)

CONTACT = "contact"

Email = tuple[str, str]
"""(source_id, e-mail as stored: trimmed, lower case)."""


def _is_contact_upsert(record: NormalizedRecord) -> bool:
    return record.root.entity == CONTACT and record.operation is Operation.UPSERT


def _is_guest(record: NormalizedRecord) -> bool:
    return _is_contact_upsert(record) and record.root.source_key.startswith(GUEST_PREFIX)


def _registered_in_batch(records: Iterable[NormalizedRecord]) -> dict[Email, str]:
    """(source, e-mail) -> the key of the first registered contact upserted with it."""
    found: dict[Email, str] = {}
    for record in records:
        email = record.root.values.get("email")
        if _is_contact_upsert(record) and not _is_guest(record) and isinstance(email, str):
            found.setdefault((record.source_id, email), record.root.source_key)
    return found


async def _registered_stored(batch: BatchState, emails: set[Email]) -> dict[Email, str]:
    """(source, e-mail) -> the key of the oldest stored, live, registered contact."""
    if not emails:
        return {}
    table = crm_model().table_name(CONTACT)
    rows = await batch.connection.fetch(
        f"SELECT DISTINCT ON (c.source_id, c.email) c.source_id, c.email, c.source_key "  # noqa: S608 - the table name comes from the model
        f"FROM {table} c JOIN unnest($1::text[], $2::text[]) AS w(source_id, email) "
        "ON c.source_id = w.source_id AND c.email = w.email "
        "WHERE c.deleted_at IS NULL AND c.source_key NOT LIKE $3 "
        "ORDER BY c.source_id, c.email, c.id",
        [source for source, _ in emails],
        [email for _, email in emails],
        f"{GUEST_PREFIX}%",
    )
    return {(row["source_id"], row["email"]): row["source_key"] for row in rows}


def _point_guests_at(
    records: list[NormalizedRecord], registered: dict[tuple[str, str], str]
) -> list[NormalizedRecord]:
    """Drop the guest contacts that have a registered one, and point every reference to
    them at it. ``registered``: (source, guest key) -> registered key."""
    kept = [
        r for r in records if not (_is_guest(r) and (r.source_id, r.root.source_key) in registered)
    ]
    for record in kept:
        for row in record.rows:
            for reference in row.references:
                target = registered.get((record.source_id, reference.target_key))
                if reference.target_entity == CONTACT and target is not None:
                    reference.target_key = target
    return kept


async def _rekey_stored_guests(batch: BatchState, registered: dict[Email, str]) -> None:
    """The stored guest row of each e-mail becomes the registered contact's row, when the
    registered key has none yet (step 2 of the module docstring)."""
    if not registered:
        return
    table = crm_model().table_name(CONTACT)
    wanted = [
        (source, guest, key)
        for (source, email), key in registered.items()
        if (guest := guest_key(email)) is not None
    ]
    rows = await batch.connection.fetch(
        f"UPDATE {table} g SET source_key = w.key, version_at = NULL, version_seq = NULL, "  # noqa: S608 - the table name comes from the model
        "version_event_id = NULL, updated_at = $4 "
        "FROM unnest($1::text[], $2::text[], $3::text[]) AS w(source_id, guest, key) "
        "WHERE g.source_id = w.source_id AND g.source_key = w.guest AND g.deleted_at IS NULL "
        f"AND NOT EXISTS (SELECT 1 FROM {table} r "
        "WHERE r.source_id = w.source_id AND r.source_key = w.key) "
        "RETURNING g.id, g.source_id, g.source_key",
        [w[0] for w in wanted],
        [w[1] for w in wanted],
        [w[2] for w in wanted],
        batch.now,
    )
    for row in rows:
        # Re-keyed, so references parked waiting for the registered key may resolve now.
        batch.arrived[CONTACT].add((row["source_id"], row["source_key"]))
        log.info(
            "guest contact became the registered contact",
            extra={"source_id": row["source_id"], "row_id": row["id"]},
        )


async def converge_guests(
    batch: BatchState, records: list[NormalizedRecord]
) -> list[NormalizedRecord]:
    """The batch with guests folded into their registered contacts (module docstring);
    a model without contacts' ``email`` has nothing to converge."""
    model = crm_model()
    if CONTACT not in model or "email" not in model.entity(CONTACT).columns:
        return records
    in_batch = _registered_in_batch(records)
    guests = {
        (r.source_id, r.root.source_key.removeprefix(GUEST_PREFIX)) for r in records if _is_guest(r)
    }
    stored = await _registered_stored(batch, guests - set(in_batch))
    found = {**stored, **in_batch}
    registered = {
        (source, key): found[(source, email)]
        for source, email in guests
        if (source, email) in found and (key := guest_key(email)) is not None
    }
    kept = _point_guests_at(records, registered) if registered else records
    await _rekey_stored_guests(batch, in_batch)
    return kept
