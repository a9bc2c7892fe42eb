"""Ingest's key -> partition mapping must be Java's default partitioner, exactly."""

from __future__ import annotations

import random

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from ponte.shared.partitioner import key_hash, murmur2, partition_for

# org.apache.kafka.common.utils.UtilsTest.testMurmur2: Java's signed 32-bit results.
KAFKA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def _signed(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


@pytest.mark.parametrize(("key", "expected"), KAFKA_VECTORS.items())
def test_murmur2_matches_kafkas_own_vectors(key: bytes, expected: int) -> None:
    assert _signed(murmur2(key)) == expected
    assert _signed(key_hash(key)) == expected  # and again, from the cache


def test_murmur2_and_partitions_match_aiokafka_for_every_tail_length() -> None:
    rng = random.Random(20261124)
    keys = [bytes(rng.randrange(256) for _ in range(length)) for length in range(0, 70)]
    keys += [f"erp-bench/pedidos/{n}".encode() for n in range(2000)]
    keys += ["loja/orders/ção-ü-€".encode()]
    for key in keys:
        assert murmur2(key) == aiokafka_murmur2(key), key
        for count in (1, 3, 7, 12, 64):
            partitions = list(range(count))
            assert partition_for(key, partitions) == DefaultPartitioner()(
                key, partitions, partitions
            ), (key, count)
