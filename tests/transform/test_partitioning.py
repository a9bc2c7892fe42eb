"""The relay's partitioner must be the default partitioner, bit for bit: the Java client's
published murmur2 vectors, aiokafka's own function on random keys, and the partition
aiokafka's producer picks for real change-event keys."""

from __future__ import annotations

import random

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from ponte.transform.partitioning import murmur2, partition_for


def signed(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # org.apache.kafka.common.utils.UtilsTest#testMurmur2 (Java ints, so signed).
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
    ],
)
def test_murmur2_matches_the_java_client(data: bytes, expected: int) -> None:
    assert signed(murmur2(data)) == expected


def test_murmur2_matches_aiokafka_on_every_length_and_byte_value() -> None:
    generator = random.Random(20261124)
    samples = [b"", bytes(range(256)), b"\xff" * 7]
    samples += [generator.randbytes(generator.randrange(0, 120)) for _ in range(5000)]
    for data in samples:
        assert murmur2(data) == aiokafka_murmur2(data), data


@pytest.mark.parametrize("count", [1, 3, 6, 12])
def test_partition_for_picks_what_the_default_partitioner_picks(count: int) -> None:
    partitions = list(range(count))
    keys = [f"order_item/src-{n}/PED-{n * 7}/{n % 10}".encode() for n in range(2000)]
    chosen = [partition_for(key, partitions) for key in keys]
    assert chosen == [DefaultPartitioner()(key, partitions, partitions) for key in keys]
    if count > 1:
        assert len(set(chosen)) == count  # spread over all of them, not a constant
