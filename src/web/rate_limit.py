"""In-process fixed-window rate limiter keyed by client address or user id.

One process serves the whole service (the model is in-process), so an in-memory counter is
exact; the number of tracked keys is bounded and the least recently used are dropped first.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

WINDOW_S = 60.0


class RateLimiter:
    """Allows `limit` hits per key per minute; `hit` returns 0 or seconds until allowed."""

    def __init__(
        self, limit: int, *, max_keys: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        assert limit > 0 and max_keys > 0
        self.limit = limit
        self.max_keys = max_keys
        self._clock = clock
        self._windows: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def hit(self, key: str) -> int:
        now = self._clock()
        started_at, count = self._windows.pop(key, (now, 0))
        if now - started_at >= WINDOW_S:
            started_at, count = now, 0
        if count >= self.limit:
            self._windows[key] = (started_at, count)
            return max(1, math.ceil(started_at + WINDOW_S - now))
        self._windows[key] = (started_at, count + 1)
        while len(self._windows) > self.max_keys:
            self._windows.popitem(last=False)
        return 0

    def reset(self) -> None:
        self._windows.clear()
