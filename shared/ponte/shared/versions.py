"""The order of two versions of one row, for every service that compares them.

The transform decides with it which version of a row is stored (``Version.newer_than``,
and the same order in SQL: ``version_order``); deliver decides with it which versions a
target already has (``version_key``), from the change events' ``version``. The rule is
in ``Version``'s docstring and in ``docs/architecture.md`` ("Which version wins");
``applies`` adds the one exception, a reprocess (``ponte reprocess``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

NO_SEQUENCE = -1
"""How a version without a sequence sorts (a row stored before migration 0015, a change
event published before it, a record normalised without its offset): before every real
sequence, raw topic offset 0 included. Python and SQL (``COALESCE(version_seq, -1)``)
use the same value."""

MAX_SEQUENCE = 2**63 - 1
"""The largest sequence stored (``version_seq`` is a bigint)."""


@dataclass(frozen=True)
class Version:
    """Which of two versions of a row wins: the triple (``at``, ``seq``, ``event_id``).

    1. ``at``: the later one wins (the event's occurred_at, else when ingest received it;
       a shop's updated_at). A row without a version (a placeholder) loses to any event.
    2. ``seq`` when ``at`` is equal: a per-source monotonic number, compared as a number.
       It is the source's own sequence when the table's mapping names one
       (``version: {field: rowversion}``), else the **raw topic offset** of the event.
       Ingest keys every raw message by source/resource/record key
       (``RawEvent.partition_key``, from the mapping's key fields), so all events of one
       record share a partition and their offsets are the order Ponte accepted them in.
       An event published again (a sender's retry after a timeout whose first publish
       landed late, an operator re-sending a dead letter) gets a *new, larger* offset:
       with an older ``at`` it still loses; with an equal ``at`` it wins, because Ponte
       cannot tell a re-sent old state from a correction at the same time, and the raw
       topic's order is the only order it has. A source for which that is wrong must
       send a sequence (``version.field``): it travels inside the event, so a re-sent
       event keeps it and loses. Offsets of *different* partitions (a parent and a child
       sent alone are different records) are compared too: deterministic, so the result
       never depends on arrival order, but meaningful only within one partition. A
       missing sequence is ``NO_SEQUENCE`` (-1), before every real one.
    3. ``event_id`` only when both are equal (e.g. the records one shop event carries,
       which share its offset, or a re-read of the same message): compared as text, by
       code point (SQL uses ``COLLATE "C"`` to agree), only so that the order is total
       and deterministic. It means nothing about which version is newer.
    """

    at: datetime | None
    seq: int | None
    event_id: str

    def sort_key(self) -> tuple[float, int, str]:
        return version_key(self.at, self.seq, self.event_id)

    def newer_than(self, other: Version | None) -> bool:
        return other is None or self.sort_key() > other.sort_key()

    def changed_at(self, now: datetime) -> Version:
        """This version as changed again at ``now`` without a new event (a parked
        reference resolved, a reprocess correcting the row): same time and sequence, the
        event id extended so it sorts right after this one and after earlier such
        changes. Consumers that skip a version they have (deliver) still take it."""
        return Version(self.at, self.seq, f"{self.event_id}~{now.isoformat()}")


def version_key(
    at: datetime | None, seq: int | None, event_id: str | None
) -> tuple[float, int, str]:
    """``Version.sort_key`` of a version held as its parts (a change event, a stored row)
    that may be missing any of them."""
    return (
        at.timestamp() if at else float("-inf"),
        NO_SEQUENCE if seq is None else seq,
        event_id or "",
    )


def version_order(alias: str, *, at_missing: str = "-infinity") -> str:
    """A stored version as SQL compares it, in ``Version.sort_key``'s order: a missing
    time (``at_missing``) or sequence first, the event id by code point (the database's
    collation could order "evt-10" and "evt-9" either way, unlike Python).
    ``alias`` is the table (or ``unnest``) holding ``version_at``, ``version_seq``,
    ``version_event_id``."""
    return (
        f"(COALESCE({alias}.version_at, '{at_missing}'), "
        f"COALESCE({alias}.version_seq, {NO_SEQUENCE}), "
        f"COALESCE({alias}.version_event_id, '') COLLATE \"C\")"
    )


def applies(
    incoming: Version,
    incoming_digest: str | None,
    stored: Version | None,
    stored_digest: str | None,
    *,
    reprocess: bool,
) -> bool:
    """Whether a version of a row is written over the stored one.

    Live traffic: only when it is newer (``Version.newer_than``). A **reprocess**
    (``ponte reprocess``: raw events already received, re-applied under the current
    mapping, the record flagged ``reprocess``) also rewrites a row of an *equal* version
    whose stored ``mapping_digest`` differs from the mapping's (``Mapping.digest``): the
    same source version read by another mapping. An older version loses either way, so
    a newer live event is never undone by a reprocess.

    Why only a reprocess: were the digest compared on live traffic, two transform
    replicas running different mappings during a rolling deploy would each rewrite the
    other's rows on every re-read of the same event, forever. Live traffic never
    rewrites an equal version, so those replicas converge by version as before (the
    newest event wins, under whichever mapping read it), and a reprocess, an operator's
    act that ends when it has read the topic, is run once the fixed mapping is deployed.
    """
    if incoming.newer_than(stored):
        return True
    return (
        reprocess
        and stored is not None
        and incoming.sort_key() == stored.sort_key()
        and incoming_digest != stored_digest
    )
