"""Which dead-letter topic each stage writes, and which reader turns its messages into
candidates: the one table ``run`` walks, so a stage is one entry here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from ponte.shared.replay import deliver, status, transform
from ponte.shared.replay.items import Candidate, Stage
from ponte.shared.replay.letters import DeadLetter
from ponte.shared.settings import Settings


@dataclass(frozen=True)
class StageSpec:
    dead_letter_topic: Callable[[Settings], str]
    read: Callable[[DeadLetter, Settings, datetime], Candidate]


SPECS: dict[Stage, StageSpec] = {
    "transform": StageSpec(
        lambda settings: settings.transform_dead_letter_topic,
        lambda letter, settings, _now: transform.candidate(letter, settings),
    ),
    "deliver": StageSpec(
        lambda settings: settings.deliver_dead_letter_topic,
        lambda letter, settings, _now: deliver.candidate(letter, settings),
    ),
    "status": StageSpec(lambda settings: settings.status_dead_letter_topic, status.candidate),
}
