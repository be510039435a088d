"""Latency statistics per stage and frame rate, in bounded memory.

A stream may run for days, so percentiles come from a ring buffer of the most recent samples
(``window``, 10 000 by default) while the mean and count cover the whole run.
"""

from __future__ import annotations

import time

import numpy as np


class LatencyStats:
    """Running count/mean over everything, p50/p95 over the last ``window`` samples (milliseconds)."""

    def __init__(self, window: int = 10_000):
        if window < 1:
            raise ValueError("window must be >= 1")
        self._ring = np.zeros(window, dtype=np.float64)
        self._next = 0
        self.count = 0
        self.total = 0.0

    def add(self, ms: float) -> None:
        self._ring[self._next] = ms
        self._next = (self._next + 1) % self._ring.size
        self.count += 1
        self.total += ms

    def summary(self) -> dict:
        if self.count == 0:
            return {"count": 0, "mean": None, "p50": None, "p95": None}
        recent = self._ring[: min(self.count, self._ring.size)]
        return {
            "count": self.count,
            "mean": round(self.total / self.count, 3),
            "p50": round(float(np.percentile(recent, 50)), 3),
            "p95": round(float(np.percentile(recent, 95)), 3),
        }


class StageStats:
    """One ``LatencyStats`` per named stage, created on first use, in first-seen order."""

    def __init__(self, window: int = 10_000):
        self.window = window
        self.stages: dict[str, LatencyStats] = {}

    def add(self, timings: dict[str, float]) -> None:
        for name, ms in timings.items():
            stats = self.stages.get(name)
            if stats is None:
                stats = self.stages[name] = LatencyStats(self.window)
            stats.add(float(ms))

    def summary(self) -> dict[str, dict]:
        return {name: s.summary() for name, s in self.stages.items()}


class FpsMeter:
    """Average FPS since the first frame, plus a smoothed instantaneous rate for live display."""

    def __init__(self, smoothing: float = 0.9, clock=time.perf_counter):
        self.clock = clock
        self.smoothing = smoothing
        self.start: float | None = None
        self.last: float | None = None
        self.frames = 0
        self.current: float | None = None

    def tick(self, n: int = 1) -> None:
        now = self.clock()
        if self.start is None:
            self.start = now
        elif self.last is not None and now > self.last:
            rate = n / (now - self.last)
            self.current = rate if self.current is None else self.smoothing * self.current + (1 - self.smoothing) * rate
        self.last = now
        self.frames += n

    @property
    def average(self) -> float | None:
        # The first tick starts the clock, so n ticks span n - 1 intervals.
        if self.start is None or self.last is None or self.last <= self.start:
            return None
        return (self.frames - 1) / (self.last - self.start)
