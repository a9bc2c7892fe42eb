"""``replay``: read the selected stages' dead-letter topics, list what the selection
picks, and (unless a dry run) send back what can go back."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from ponte.shared.replay.items import Candidate, Item, Outgoing, Stage
from ponte.shared.replay.letters import read_until_quiet
from ponte.shared.replay.selection import Selection
from ponte.shared.replay.sending import send
from ponte.shared.replay.stages import SPECS
from ponte.shared.settings import Settings


@dataclass(frozen=True)
class StageCount:
    listed: int
    replayable: int


@dataclass
class Report:
    dry_run: bool
    items: list[Item] = field(default_factory=list)
    messages: int = 0
    """Messages sent (or, in a dry run, that would be): the same event dead-lettered twice,
    or one change that failed for two targets, goes back once."""

    @property
    def replayable(self) -> int:
        return sum(1 for item in self.items if item.not_replayable is None)

    def counts(self) -> dict[Stage, StageCount]:
        """Per stage selected: dead letters listed and how many of them can go back."""
        counts: dict[Stage, StageCount] = {}
        for item in self.items:
            seen = counts.get(item.stage, StageCount(0, 0))
            counts[item.stage] = StageCount(
                seen.listed + 1, seen.replayable + (item.not_replayable is None)
            )
        return counts


async def replay(settings: Settings, selection: Selection, *, dry_run: bool = True) -> Report:
    """What ``selection`` picks from the dead-letter topics, sent back unless ``dry_run``.
    Dead letters stay where they are: replaying is repeatable, and idempotent downstream
    (see the package docstring for what guarantees it per stage)."""
    candidates = await _selected(settings, selection)
    outgoing = _once_each([c.outgoing for c in candidates if c.outgoing is not None])
    if not dry_run:
        await send(settings, outgoing)
    return Report(dry_run, [c.item for c in candidates], len(outgoing))


async def _selected(settings: Settings, selection: Selection) -> list[Candidate]:
    """The selected candidates, stage by stage in data-flow order, each topic in order."""
    stages = [stage for stage in SPECS if stage in selection.stages]
    topics = {SPECS[stage].dead_letter_topic(settings): stage for stage in stages}
    if len(topics) < len(stages):
        # One topic for two stages would file one stage's dead letters under the other's
        # reader (and send them to the wrong topic): refuse rather than guess.
        raise ValueError(
            "two stages share a dead-letter topic: PONTE_TRANSFORM_DEAD_LETTER_TOPIC, "
            "PONTE_DELIVER_DEAD_LETTER_TOPIC and PONTE_STATUS_DEAD_LETTER_TOPIC must differ"
        )
    letters = await read_until_quiet(settings, list(topics))
    now = datetime.now(UTC)
    candidates = [SPECS[topics[letter.topic]].read(letter, settings, now) for letter in letters]
    order = {stage: n for n, stage in enumerate(stages)}
    selected = [c for c in candidates if selection.selects(c.item)]
    # Stable: within a stage, each partition keeps the order it was read in.
    return sorted(selected, key=lambda c: order[c.item.stage])


def _once_each(messages: list[Outgoing]) -> list[Outgoing]:
    """Equal messages once, in first-seen order (the same bytes to the same place are a
    repeat downstream anyway; sending them once saves the consumers the work)."""
    seen: set[tuple[str, bytes, bytes]] = set()
    unique = []
    for message in messages:
        identity = (message.topic, message.key, message.value)
        if identity not in seen:
            seen.add(identity)
            unique.append(message)
    return unique
