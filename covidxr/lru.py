"""Bounded caches, the one kind the project keeps. No Streamlit.

Most live in the app's session state (see webapp.session.state), one set per browser session, for one user's
films and heatmaps: the bound keeps a long session from growing without limit, and the content key means
the same film uploaded twice is decoded, scored and explained once. A few are a process's, shared under a lock
of their module's (site profiles as loaded, a cluster run's rows as read so far, how far each run's rows.csv
has been counted: covidxr.engines.runs).
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Generic, Hashable, Sequence, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def file_key(data: bytes) -> str:
    """Content key for per-user caches: the same film uploaded twice is scored and explained once."""
    return hashlib.sha256(data).hexdigest()


class LRU(Generic[K, V]):
    """A small bounded cache, least recently used out first."""

    def __init__(self, capacity: int = 32):
        self.capacity = capacity
        self._d: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        if key in self._d:
            self._d.move_to_end(key)
            return self._d[key]
        return None

    def put(self, key: K, value: V) -> V:
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self.capacity:
            self._d.popitem(last=False)
        return value

    def __contains__(self, key: object) -> bool:
        return key in self._d

    def __len__(self) -> int:
        return len(self._d)

    def clear(self) -> None:
        self._d.clear()

    def keys(self) -> Sequence[K]:
        return list(self._d)
