"""The sources ingest knows, cached in memory and refreshed from PostgreSQL.

Webhooks are answered from the cache (no database round trip to authenticate), and the
cache is re-read every ``sources_refresh_s`` so a change made through the ops API
(deactivation, secret rotation, allowlist) takes effect within seconds on every replica.
If PostgreSQL is unreachable, the last good copy stays in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import asyncpg

from ponte.ingest.addresses import IpNetwork, networks
from ponte.shared.secret_box import SecretBox
from ponte.shared.sources import SourceConfig, fetch_sources

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KnownSource:
    """A source with its networks parsed once, not per request."""

    config: SourceConfig
    allowed: list[IpNetwork]
    trusted_proxies: list[IpNetwork]


class SourceRegistry:
    def __init__(
        self,
        pool: asyncpg.Pool,
        box: SecretBox,
        *,
        refresh_s: float,
        default_proxies: list[str],
    ):
        self._pool = pool
        self._box = box
        self._refresh_s = refresh_s
        self._default_proxies = default_proxies
        self._sources: dict[str, KnownSource] = {}
        self._task: asyncio.Task[None] | None = None
        self.loaded = False

    def get(self, source_id: str) -> KnownSource | None:
        return self._sources.get(source_id)

    async def refresh(self) -> None:
        configs = await fetch_sources(self._pool, self._box)
        self._sources = {
            source_id: KnownSource(
                config,
                networks(config.allowed_cidrs),
                networks(
                    config.trusted_proxies
                    if config.trusted_proxies is not None
                    else self._default_proxies
                ),
            )
            for source_id, config in configs.items()
        }
        self.loaded = True

    async def start(self) -> None:
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            await self.refresh()
        self._task = asyncio.create_task(self._refresh_forever(), name="sources-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.refresh()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning(
                    "could not refresh sources; keeping the last copy",
                    extra={"error": type(error).__name__},
                )
