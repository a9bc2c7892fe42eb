"""Kafka's default key -> partition mapping, computed by Ponte's own producers.

Every event of one record must land in the partition Java's default partitioner picks
(``toPositive(murmur2(key)) % partitions``), so that Ponte's producers, any other producer
of a topic and tools such as kcat agree on where a record's events are, and their order
holds: ingest's publisher (raw topic) and the transform's outbox relay (changes topic,
which builds whole record batches per partition) both pass the result as ``partition=``.
aiokafka computes the same thing with a pure-Python murmur2 on every send (about 7 µs for a
typical key, the largest single item of a send in the ingest benchmark); here the hash
loops over 32-bit words unpacked in one call, and the hashes of recent keys are
remembered: a record that changes often is sent again and again.

``tests/shared/test_partitioner.py`` pins the hash to the vectors of Kafka's own
``UtilsTest.testMurmur2`` and to aiokafka's implementation.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_WORDS = struct.Struct("<I")

_CACHE_MAX = 65_536
_recent: dict[bytes, int] = {}


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``), as an unsigned
    32-bit int: the same value as the Java one's two's complement."""
    length = len(data)
    h = _SEED ^ length
    whole = length & ~3
    for (k,) in _WORDS.iter_unpack(data[:whole]):
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    extra = length & 3
    if extra >= 3:
        h ^= data[whole + 2] << 16
    if extra >= 2:
        h ^= data[whole + 1] << 8
    if extra >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def key_hash(key: bytes) -> int:
    """``murmur2(key)``, remembered for the most recent keys (bounded: the cache is
    emptied when full, which is cheaper than tracking use and good enough for a cache
    whose misses cost a few microseconds)."""
    cached = _recent.get(key)
    if cached is None:
        if len(_recent) >= _CACHE_MAX:
            _recent.clear()
        cached = _recent[key] = murmur2(key)
    return cached


def partition_for(key: bytes, partitions: Sequence[int]) -> int:
    """Java's default partitioner for a keyed record: ``partitions`` sorted by id, as
    Kafka lists them."""
    return partitions[(key_hash(key) & 0x7FFFFFFF) % len(partitions)]
