"""Every decoder test runs on the whole input, byte by byte, and randomly split."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import pytest

Chunker = Callable[[bytes], Iterator[bytes]]


def whole(data: bytes) -> Iterator[bytes]:
    yield data


def bytewise(data: bytes) -> Iterator[bytes]:
    for i in range(len(data)):
        yield data[i : i + 1]


def random_chunks(data: bytes, seed: int = 1) -> Iterator[bytes]:
    rng = random.Random(seed)
    pos = 0
    while pos < len(data):
        step = rng.randint(1, 7)
        yield data[pos : pos + step]
        pos += step


CHUNKERS = pytest.mark.parametrize(
    "chunker", [whole, bytewise, random_chunks], ids=["whole", "bytes", "random"]
)
