"""Latency statistics and FPS."""

from __future__ import annotations

import numpy as np
import pytest

from adtr_edge.runtime.stats import FpsMeter, LatencyStats, StageStats


def test_latency_stats_match_numpy():
    values = np.random.default_rng(0).gamma(2.0, 3.0, 500)
    s = LatencyStats()
    for v in values:
        s.add(v)
    out = s.summary()
    assert out["count"] == 500
    assert out["mean"] == pytest.approx(values.mean(), abs=1e-3)
    assert out["p50"] == pytest.approx(np.percentile(values, 50), abs=1e-3)
    assert out["p95"] == pytest.approx(np.percentile(values, 95), abs=1e-3)


def test_percentiles_cover_the_recent_window_and_memory_stays_bounded():
    s = LatencyStats(window=100)
    for _ in range(1000):
        s.add(100.0)
    for _ in range(100):
        s.add(1.0)
    out = s.summary()
    assert out["p95"] == 1.0 and out["count"] == 1100  # old samples left the window...
    assert out["mean"] == pytest.approx((100_000 + 100) / 1100, abs=1e-3)  # ...but not the mean
    assert s._ring.size == 100


def test_empty_stats():
    assert LatencyStats().summary() == {"count": 0, "mean": None, "p50": None, "p95": None}
    with pytest.raises(ValueError):
        LatencyStats(window=0)


def test_stage_stats_keep_stage_order():
    st = StageStats()
    st.add({"preprocess": 1.0, "backbone": 2.0})
    st.add({"preprocess": 3.0, "backbone": 4.0, "transformer": 5.0})
    out = st.summary()
    assert list(out) == ["preprocess", "backbone", "transformer"]
    assert out["preprocess"]["mean"] == 2.0 and out["transformer"]["count"] == 1


def test_fps_meter_with_a_fake_clock():
    now = [0.0]
    m = FpsMeter(smoothing=0.0, clock=lambda: now[0])
    assert m.average is None
    for _ in range(11):
        m.tick()
        now[0] += 0.1
    assert m.average == pytest.approx(10.0) and m.current == pytest.approx(10.0)
    now[0] += 0.9  # a 1 s gap since the last frame: the instantaneous rate follows
    m.tick()
    assert m.current == pytest.approx(1.0)
