"""benchmarks/swap_latency.py's figures from a synthetic list of frame records: the first frame on the
new model and the one before it are found by digest, a gap in the indices counts as a dropped frame,
and the baseline leaves out the frames a swap touched and the warm-up."""

from __future__ import annotations

from adtr_edge.bench.scripts import from_checkout


def _frames(models: list[str], latency: dict, skip=()) -> list[dict]:
    return [{"index": i, "model": m, "latency_ms": latency.get(i, 10.0)} for i, m in enumerate(models) if i not in skip]


def test_summary_finds_the_swap_frames_and_counts_drops():
    bench = from_checkout("benchmarks/swap_latency.py")
    # A up to frame 23, B from 24 to 43, A again from 44; the swaps were asked for at 20 and 40.
    models = ["A"] * 24 + ["B"] * 20 + ["A"] * 16
    latency = {0: 90.0, 1: 50.0, 21: 30.0, 22: 11.0, 23: 17.0, 24: 25.0, 42: 12.0, 43: 13.0, 44: 40.0, 55: 20.0}
    frames = _frames(models, latency, skip={50})  # frame 50 captured, never scored
    swaps = [{"trigger_frame": 20, "to_digest": "B", "load_s": 0.05, "call_s": 0.06},
             {"trigger_frame": 40, "to_digest": "A", "load_s": 0.07, "call_s": 0.09},
             {"trigger_frame": 45, "error": "model x refused, the running model stays: ..."}]
    s = bench.summarize(frames, swaps, warmup=2)
    assert (s["frames_in"], s["frames_out"], s["dropped"], s["scored_twice"], s["in_order"]) == (60, 59, 1, 0, True)
    one, two, failed = s["swaps"]
    assert (one["before_frame"], one["first_frame"], one["before_ms"], one["first_ms"]) == (23, 24, 17.0, 25.0)
    assert (one["frames_while_loading"], one["loading_max_ms"]) == (2, 30.0)  # frames 21 and 22
    assert (two["before_frame"], two["first_frame"], two["before_ms"], two["first_ms"]) == (43, 44, 13.0, 40.0)
    assert (two["frames_while_loading"], two["loading_max_ms"]) == (2, 12.0)
    assert failed["error"].startswith("model x refused") and s["failed_swaps"] == 1
    # Baseline: 59 scored - 2 warm-up - 4 + 4 touched by the swaps = 49 frames, all 10 ms but frame 55.
    b = s["baseline"]
    assert b["count"] == 49 and b["median_ms"] == 10.0 and b["max_ms"] == 20.0 and 10.0 <= b["p90_ms"] < 20.0
    assert s["spread"]["first_ms"] == {"min": 25.0, "median": 32.5, "max": 40.0}
    assert s["spread"]["load_s"]["max"] == 0.07
    table = bench.markdown(s)
    assert "| 1 | B | 24 | 17.0 | 25.0 | 30.0 (2 frames) | 0.050 | 0.060 |" in table
    assert "| 60 / 59 / 1 / 0 |" in table


def test_a_swap_whose_new_model_never_scored_a_frame_is_reported_failed():
    bench = from_checkout("benchmarks/swap_latency.py")
    frames = _frames(["A"] * 30, {})
    s = bench.summarize(frames, [{"trigger_frame": 20, "to_digest": "B", "load_s": 0.05, "call_s": 0.06}], warmup=0)
    assert s["failed_swaps"] == 1 and s["swaps"][0]["error"] == "no frame scored by the new model"
    assert s["dropped"] == 0 and s["baseline"]["count"] == 30 and "spread" not in s
