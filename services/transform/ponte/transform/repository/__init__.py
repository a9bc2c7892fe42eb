"""Applying normalised records to PostgreSQL: versioned upserts, references, tombstones.

One call applies a whole batch inside the caller's transaction, entity by entity in the
write order of the CRM model (``ponte.shared.crm_model``: parents and referenced
entities first), with one round trip per
kind of statement and entity rather than per row. The rules, in the order they apply:

1. **Latest version wins.** Within the batch only the newest version of each record is
   kept; against the database a record applies only if its version (occurred_at, then
   the sequence: the source's own or the raw topic offset, then the event id:
   ``normalize.Version``) is newer than the stored one. A repeated or older event
   changes nothing, and a record that loses at its root loses as a whole (its children
   are not touched). The one exception is a **reprocess** (``ponte reprocess``, records
   flagged ``reprocess``): an event of an *equal* version rewrites a row whose
   ``mapping_digest`` is not its mapping's, and a parent so rewritten drops the children
   of that same version its set no longer carries. Live traffic never compares digests,
   so replicas on different mappings during a rolling deploy cannot undo each other
   (``ponte.shared.versions.applies``).
2. **The newest version is the whole row** (normalize fills unmapped-but-known columns
   with NULL), so the final state does not depend on arrival order.
3. **Deletes are tombstones** (``deleted_at`` + version), so an older upsert arriving later
   still loses; deleting a parent deletes its children. A tombstone holds the delete's
   version alone (its time as ``deleted_at``, content cleared), so it is the same row
   whatever arrived before it.
4. **Children are a set.** A child missing from the newest version of its parent is
   tombstoned. Each parent row remembers, per child table, the version that last replaced
   its set (``child_set_versions``: a version carrying the table, or a delete), so a child
   sent on its own that is older than that version is stale even when there is no row to
   tombstone (it never arrived before the set replaced it). A child still waiting for its
   parent (parked) when the parent arrives is dropped by that parent's set once the
   reference resolves, at the end of the batch: either arrival order ends the same.
5. **References are resolved by key.** Missing targets are either created as placeholders
   (``stub``: codes, brands, products) or *parked* (the column stays NULL and a row in
   ``parked_references`` waits); parked references are resolved as soon as their target
   arrives, in this batch or a later one.

Every row that changes produces a change event, returned to the caller, who puts it in the
outbox in the same transaction.

The modules, one concept each (this ``__init__`` imports none of them, so each imports
alone), in the order a batch meets them: ``applier`` (``BatchApplier``: the batch, entity
by entity), ``guests`` (a shop's guest contact folded into its registered one),
``grouping`` (collapsing the batch to the newest version per record and row),
``upserts`` (entity rows written with their versions), ``tombstones`` (deletes),
``references`` (references resolved by key, stubs), ``parking`` (parked references and
their release), ``child_sets`` (children as a set), ``changes`` (change events and the
batch's counts), and below them ``state`` (what one batch has learnt so far),
``statements`` (one statement for many rows) and ``tables`` (the model's tables).
"""
