"""Rolling means in bounded memory: the window is cut into a fixed number of
buckets (48), each holding a sum and a count. A 24 h mean at a 10 s interval
keeps 48 buckets, not 8,640 floats."""

from __future__ import annotations

from collections import deque

BUCKETS = 48


class RollingMean:
    def __init__(self, window_s: float, buckets: int = BUCKETS):
        self.window_s = window_s
        self.bucket_s = window_s / buckets
        self._buckets: deque[list[float]] = deque()  # [start, sum, count]
        self.first_at: float | None = None

    def add(self, value: float, now: float) -> None:
        if self.first_at is None:
            self.first_at = now
        start = now - (now % self.bucket_s)
        if self._buckets and self._buckets[-1][0] == start:
            self._buckets[-1][1] += value
            self._buckets[-1][2] += 1
        else:
            self._buckets.append([start, value, 1])
        self._expire(now)

    def _expire(self, now: float) -> None:
        while self._buckets and self._buckets[0][0] + self.bucket_s <= now - self.window_s:
            self._buckets.popleft()

    def mean(self, now: float) -> float | None:
        self._expire(now)
        count = sum(b[2] for b in self._buckets)
        return sum(b[1] for b in self._buckets) / count if count else None

    def coverage(self, now: float) -> float:
        """How much of the window the data spans (0..1)."""
        if self.first_at is None:
            return 0.0
        return min(1.0, (now - self.first_at) / self.window_s)

    def __len__(self) -> int:
        return len(self._buckets)
