"""Fuzzing the real ingest (issue #20): hypothesis-generated signed bodies, random bytes
and JSON with extreme nesting, numbers, Unicode and duplicate keys, over real HTTP with
the real broker and PostgreSQL. Properties: never a 5xx, and every request has its
history row with the status it was answered.

Ingest runs in a thread with its own event loop so hypothesis can drive it from a plain
(synchronous) test and shrink a failing body; each request carries a unique client
address (X-Forwarded-For from a trusted proxy) by which its history row is found."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ponte.shared.settings import Settings
from tests.conftest import serve_ingest, unique_topic, write_sources
from tests.eventually import eventually
from tests.ingest.test_webhooks import ERP_SECRET, erp_headers

pytestmark = pytest.mark.integration

SOURCE = "fuzz-erp"


class ThreadedIngest:
    """The ingest app served from a background thread's event loop."""

    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self._ready: Future[str] = Future()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._served = asyncio.run_coroutine_threadsafe(self._serve(settings), self.loop)
        self.url = self._ready.result(timeout=60)
        self.pool: asyncpg.Pool = self.run(self._pool(settings))

    @staticmethod
    async def _pool(settings: Settings) -> asyncpg.Pool:
        return await asyncpg.create_pool(settings.asyncpg_dsn, min_size=1, max_size=2)

    async def _serve(self, settings: Settings) -> None:
        self._stop = asyncio.Event()
        try:
            async for running in serve_ingest(settings):
                self._ready.set_result(running.url)
                await self._stop.wait()
        except BaseException as error:
            if not self._ready.done():
                self._ready.set_exception(error)
            raise

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    def close(self) -> None:
        self.run(self.pool.close())
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._served.result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


@pytest.fixture(scope="module")
def threaded(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    folder: Path = tmp_path_factory.mktemp("fuzz")
    sources = write_sources(
        folder / "sources.yaml",
        [
            {
                "id": SOURCE,
                "kind": "erp",
                "secrets": [ERP_SECRET],
                "trusted_proxies": ["127.0.0.1/32"],
            }
        ],
    )
    settings = base_settings.model_copy(
        update={"raw_topic": unique_topic(), "sources_file": sources, "max_body_bytes": 256 * 1024}
    )
    ingest = ThreadedIngest(settings)
    try:
        yield ingest
    finally:
        ingest.close()


# Scalars as JSON text: ordinary, extreme and hostile.
_NUMBERS = st.one_of(
    st.integers().map(str),
    st.integers(min_value=1, max_value=5000).map(lambda n: "9" * n),
    st.floats().map(lambda f: json.dumps(f)),  # NaN, Infinity, -Infinity included
    st.sampled_from(["1e999", "-1e999", "1e-999", "-0", "1E+308", "0.1e1"]),
)
_TEXT = st.one_of(
    st.text(max_size=12).map(json.dumps),  # any code point, surrogates escaped \udXXX
    st.text(max_size=12).map(lambda t: json.dumps(t, ensure_ascii=False)),
    st.sampled_from(['"X\\u0000Y"', '"\\ud800"', '"\\udfff\\ud800"', '"a\\u003ab"', '"\\n"']),
)
_SCALARS = st.one_of(_NUMBERS, _TEXT, st.sampled_from(["true", "false", "null"]))
_KEYS = st.one_of(
    st.sampled_from(['"codigo"', '"total"', '"operation"', '"k\\u0000"', '"\\ud800"']),
    _TEXT,
)
_VALUES = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4).map(lambda items: "[" + ",".join(items) + "]"),
        st.lists(st.tuples(_KEYS, children), max_size=4).map(
            lambda pairs: "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"
        ),
    ),
    max_leaves=12,
)
_DEEP = st.tuples(st.integers(min_value=1, max_value=1200), st.sampled_from(["[]", "{}"])).map(
    lambda spec: (
        "[" * spec[0] + "1" + "]" * spec[0]
        if spec[1] == "[]"
        else '{"a":' * spec[0] + "1" + "}" * spec[0]
    )
)


@st.composite
def _envelopes(draw: st.DrawFn) -> bytes:
    """A Pedido envelope as text whose parts may be anything from the strategies."""
    fields = [
        ('"id"', draw(st.one_of(st.just(json.dumps(f"fz-{draw(st.uuids())}")), _SCALARS))),
        ('"occurred_at"', '"2024-11-14T12:01:32-03:00"'),
        ('"operation"', draw(st.sampled_from(['"upsert"', '"delete"']))),
        ('"table"', draw(st.one_of(st.just('"Pedido"'), _TEXT))),
    ]
    rows = draw(
        st.lists(
            st.lists(st.tuples(_KEYS, st.one_of(_VALUES, _DEEP)), min_size=1, max_size=5).map(
                lambda pairs: '{"codigo":"P1",' + ",".join(f"{k}:{v}" for k, v in pairs) + "}"
            ),
            min_size=1,
            max_size=3,
        )
    )
    fields.append(('"rows"', "[" + ",".join(rows) + "]"))
    if draw(st.booleans()):
        fields.append(draw(st.sampled_from([('"operation"', '"delete"'), ('"id"', '"again"')])))
    return ("{" + ",".join(f"{k}:{v}" for k, v in fields) + "}").encode("utf-8", "surrogatepass")


BODIES = st.one_of(
    st.binary(max_size=400),
    _envelopes(),
    _VALUES.map(lambda text: text.encode("utf-8", "surrogatepass")),
    _DEEP.map(str.encode),
)

_addresses = (f"10.{a}.{b}.{c}" for a, b, c in itertools.product(range(256), repeat=3))


def test_no_body_gets_a_5xx_and_every_request_is_recorded(threaded: ThreadedIngest) -> None:
    answered: dict[str, int] = {}

    with httpx.Client(timeout=30) as client:

        @settings(
            max_examples=500,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(body=BODIES, charset=st.sampled_from([None, "utf-8", "iso-8859-1", "utf-16"]))
        def post(body: bytes, charset: str | None) -> None:
            address = next(_addresses)
            content_type = "application/json" + (f"; charset={charset}" if charset else "")
            headers = {
                **erp_headers(body, content_type=content_type),
                "x-forwarded-for": address,
            }
            response = client.post(
                f"{threaded.url}/webhooks/{SOURCE}", content=body, headers=headers
            )
            assert response.status_code < 500, (response.status_code, response.text, body[:300])
            answered[address] = response.status_code

        post()

    async def history() -> dict[str, int]:
        rows = await threaded.pool.fetch(
            "SELECT client_ip, status_code FROM webhook_requests WHERE source_id = $1", SOURCE
        )
        return {row["client_ip"]: row["status_code"] for row in rows}

    # Awaited on the ingest's own loop, where its pool lives (this test is synchronous).
    recorded: dict[str, int] = threaded.run(
        eventually(
            history,
            satisfied=lambda recorded: set(answered) <= set(recorded),
            timeout_s=15,
            interval_s=0.2,
            message=f"a history row for each of the {len(answered)} requests",
        )
    )
    assert {a: recorded[a] for a in answered} == answered
    assert len(answered) >= 100
