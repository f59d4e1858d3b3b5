from __future__ import annotations

import pytest

from lstmad.sharding import ShardFilter, owner

HOSTS = [f"host-{i}:9100" for i in range(2000)]


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_every_entity_belongs_to_exactly_one_replica(count: int) -> None:
    filters = [ShardFilter(i, count) for i in range(count)]
    for host in HOSTS:
        assert sum(f.owns(host) for f in filters) == 1
    shares = [sum(f.owns(h) for h in HOSTS) for f in filters]
    assert min(shares) > len(HOSTS) / count * 0.8


def test_growing_the_fleet_moves_only_what_must_move() -> None:
    before = {h: owner(h, 2) for h in HOSTS}
    after = {h: owner(h, 3) for h in HOSTS}
    moved = [h for h in HOSTS if before[h] != after[h]]
    assert all(after[h] == 2 for h in moved)  # only to the new replica
    assert 0.25 < len(moved) / len(HOSTS) < 0.42  # about 1/3


def test_bad_index() -> None:
    with pytest.raises(ValueError):
        ShardFilter(3, 3)
