"""Rolling means in bounded memory: the window is cut into a fixed number of
buckets (48), each holding a sum and a count. A 24 h mean at a 10 s interval
keeps 48 buckets, not 8,640 floats.

Time is the monotonic clock's (seconds): a wall-clock step moves nothing.

Coverage (how far the mean can be trusted) is measured from the data in the
window, not from the first sample ever: each bucket with data stands for the
time up to the next bucket with data, but for at most ``window_s / 8``
(``MAX_GAP_FRACTION``); a single sample after a gap covers little, a gap in
the data lowers the coverage until it has left the window.
"""

from __future__ import annotations

from collections import deque

BUCKETS = 48
#: a sample stands for at most this fraction of the window after it
MAX_GAP_FRACTION = 1 / 8


class RollingMean:
    def __init__(self, window_s: float, buckets: int = BUCKETS):
        self.window_s = window_s
        self.bucket_s = window_s / buckets
        self.max_gap_s = max(self.bucket_s, window_s * MAX_GAP_FRACTION)
        self._buckets: deque[list[float]] = deque()  # [start, sum, count, first sample's time]

    def add(self, value: float, now: float) -> None:
        start = now - (now % self.bucket_s)
        if self._buckets and self._buckets[-1][0] == start:
            self._buckets[-1][1] += value
            self._buckets[-1][2] += 1
        elif self._buckets and start < self._buckets[-1][0]:
            # older than the newest bucket (never on a monotonic clock): count it there
            self._buckets[-1][1] += value
            self._buckets[-1][2] += 1
        else:
            self._buckets.append([start, value, 1, now])
        self._expire(now)

    def _expire(self, now: float) -> None:
        while self._buckets and self._buckets[0][0] + self.bucket_s <= now - self.window_s:
            self._buckets.popleft()

    def mean(self, now: float) -> float | None:
        self._expire(now)
        count = sum(b[2] for b in self._buckets)
        return sum(b[1] for b in self._buckets) / count if count else None

    def coverage(self, now: float) -> float:
        """How much of the window the data in it covers (0..1)."""
        self._expire(now)
        if not self._buckets:
            return 0.0
        window_start = now - self.window_s
        covered = 0.0
        starts = [b[3] for b in self._buckets]
        for i, start in enumerate(starts):
            end = starts[i + 1] if i + 1 < len(starts) else now
            begin = max(start, window_start)
            covered += max(0.0, min(end, start + self.max_gap_s) - begin)
        return min(1.0, covered / self.window_s)

    def __len__(self) -> int:
        return len(self._buckets)
