"""Sources and token buckets."""

from __future__ import annotations

import pytest

from meshserial.ratelimit import TokenBuckets, source_key


@pytest.mark.parametrize(
    ("address", "source"),
    [
        ("198.18.0.7", "198.18.0.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("[2001:db8:1:2::9]", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::ffff:198.18.0.7", "198.18.0.7"),
        ("not an address", "not an address"),
        ("x" * 100, "x" * 64),
    ],
)
def test_source_key(address: str, source: str) -> None:
    assert source_key(address) == source


def test_buckets_refill_and_stay_bounded() -> None:
    buckets = TokenBuckets(rate=1.0, burst=3, max_keys=10)
    assert [buckets.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a", 0.0) == pytest.approx(1.0)
    assert buckets.take("a", 1.0) == 0.0
    for i in range(100):
        buckets.take(f"k{i}", 0.0)
    assert len(buckets) == 10
