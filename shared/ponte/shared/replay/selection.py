"""The filters of a replay, all optional and combined with AND. A filter a stage's dead
letters have nothing for (``target`` on the transform's) selects none of that stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from ponte.shared.replay.items import STAGES, Item, Stage


@dataclass(frozen=True)
class Selection:
    stages: tuple[Stage, ...] = STAGES
    source_id: str | None = None
    table: str | None = None
    """The entity (deliver, status) or the source's table (transform)."""
    entity: str | None = None
    """The same column as ``table``, under the ops API's older name (AND, as the rest)."""
    target_id: str | None = None
    since: datetime | None = None
    """Failed at or after (an aware datetime)."""
    until: datetime | None = None
    """Failed at or before (an aware datetime)."""
    reason: str | None = None
    """A part of the recorded reason, in any case."""
    event_ids: frozenset[str] = field(default_factory=frozenset)
    keys: frozenset[str] = field(default_factory=frozenset)
    """Dead-letter keys: ``source/entity/key`` (deliver, status), ``source/resource/key``
    (transform)."""

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            moment = getattr(self, name)
            if moment is not None and moment.tzinfo is None:
                raise ValueError(f"{name}: needs an offset, such as 2024-11-14T12:00:00-03:00")

    def selects(self, item: Item) -> bool:
        return (
            item.stage in self.stages
            and _equal(self.source_id, item.source)
            and _equal(self.table, item.table)
            and _equal(self.entity, item.table)
            and _equal(self.target_id, item.target)
            and (self.reason is None or self.reason.casefold() in item.reason.casefold())
            and (not self.event_ids or item.event_id in self.event_ids)
            and (not self.keys or item.key in self.keys)
            and self._in_period(item.failed_at_time)
        )

    def _in_period(self, when: datetime | None) -> bool:
        if self.since is None and self.until is None:
            return True
        return (
            when is not None
            and (self.since is None or when >= self.since)
            and (self.until is None or when <= self.until)
        )


def _equal(wanted: str | None, value: str) -> bool:
    return wanted is None or wanted == value
