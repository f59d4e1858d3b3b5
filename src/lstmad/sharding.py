"""Deterministic sharding of entities across ``serve`` replicas.

Replica ``index`` of ``count`` scores the entities whose rendezvous
(highest-random-weight) hash is highest for that replica. Every entity belongs
to exactly one replica, the choice depends only on the entity label value, and
when ``count`` changes only the entities that must move do: going from N to
N + 1 replicas moves about 1/(N + 1) of them, all to the new replica.
"""

from __future__ import annotations

import hashlib

__all__ = ["ShardFilter", "owner"]


def _weight(entity: str, member: int) -> int:
    digest = hashlib.blake2b(f"{member}\x00{entity}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(entity: str, count: int) -> int:
    """The replica (0..count-1) that owns ``entity``."""
    if count <= 1:
        return 0
    return max(range(count), key=lambda member: _weight(entity, member))


class ShardFilter:
    """Answers "is this entity mine?" for one replica, caching the answer per entity."""

    def __init__(self, index: int = 0, count: int = 1) -> None:
        if not 0 <= index < max(count, 1):
            raise ValueError(f"expected 0 <= index < count={count}, found index {index}")
        self.index = index
        self.count = count
        self._cache: dict[str, bool] = {}

    def owns(self, entity: str) -> bool:
        if self.count <= 1:
            return True
        mine = self._cache.get(entity)
        if mine is None:
            if len(self._cache) > 1_000_000:
                self._cache.clear()
            mine = owner(entity, self.count) == self.index
            self._cache[entity] = mine
        return mine
