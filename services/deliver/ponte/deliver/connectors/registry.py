"""Every kind of target Ponte delivers to, by the ``kind:`` of its YAML entry, and the
targets file read into those kinds.

A new kind is one module under ``connectors/`` (its settings model, a subclass of
``Target``, and its connector) and one line in ``TARGET_KINDS``. A kind without a native
upsert, written by lookup then create or update, also goes in ``LOOKUP_THEN_WRITE``: it is
built with ``KeyLocks`` (``ponte.deliver.keylock``) so writers of one key never both
create, in any replica.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from pydantic import ValidationError

from ponte.deliver.connectors.base import Connector, TargetKind
from ponte.deliver.connectors.hubspot import HubSpotConnector, HubSpotTarget
from ponte.deliver.connectors.ploomes import PloomesConnector, PloomesTarget
from ponte.deliver.connectors.rest import RestConnector, RestTarget
from ponte.deliver.connectors.webhook import WebhookConnector, WebhookTarget
from ponte.deliver.keylock import KeyLocks
from ponte.deliver.ratelimit import TokenBucket
from ponte.deliver.targets import Target
from ponte.shared.config_files import load_entries
from ponte.shared.validation_errors import every_problem

TARGET_KINDS: dict[str, TargetKind] = {
    "hubspot": TargetKind(HubSpotTarget, HubSpotConnector.for_target),
    "ploomes": TargetKind(PloomesTarget, PloomesConnector.for_target),
    "rest": TargetKind(RestTarget, RestConnector.for_target),
    "webhook": TargetKind(WebhookTarget, WebhookConnector.for_target),
}

LockedBuild = Callable[[Any, httpx.AsyncClient, TokenBucket, KeyLocks], Connector]
"""(the target, its HTTP client, its token bucket, its key locks) -> the connector."""

LOOKUP_THEN_WRITE: dict[str, LockedBuild] = {
    "ploomes": PloomesConnector.for_target,
    "rest": RestConnector.for_target,
}
"""Kinds that find a record before creating it, and so hold its keys while they do."""


def build_connector(
    target: Target,
    client: httpx.AsyncClient,
    bucket: TokenBucket,
    key_lock_pool: asyncpg.Pool | None = None,
) -> Connector:
    """The target's connector. ``key_lock_pool`` makes the key locks of lookup-then-write
    kinds shared by every process using that database (``ponte.deliver.keylock``); without
    it they hold only within this process."""
    build = LOOKUP_THEN_WRITE.get(target.kind)
    if build is not None:
        return build(target, client, bucket, KeyLocks(target.id, key_lock_pool))
    return TARGET_KINDS[target.kind].build(target, client, bucket)


def parse_target(entry: dict[str, Any]) -> Target:
    """One target entry as its kind's model; an unknown kind is an error naming the kinds."""
    kind = entry.get("kind") if isinstance(entry, dict) else None
    if kind not in TARGET_KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {sorted(TARGET_KINDS)}")
    return TARGET_KINDS[kind].model.model_validate(entry)


def load_targets(path: Path) -> list[Target]:
    targets = []
    for index, entry in enumerate(load_entries(path, "targets")):
        try:
            targets.append(parse_target(entry))
        except ValidationError as error:
            name = entry.get("id", "?") if isinstance(entry, dict) else "?"
            raise ValueError(f"{path}: targets[{index}] ({name}): {every_problem(error)}") from None
        except ValueError as error:
            name = entry.get("id", "?") if isinstance(entry, dict) else "?"
            raise ValueError(f"{path}: targets[{index}] ({name}): {error}") from None
    return targets
