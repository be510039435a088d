"""What a live model swap costs a running stream: end-to-end latency of the frames around each swap.

    python benchmarks/swap_latency.py [--model A --model-b B] [--fps 30] [--swaps 5] [--every 60]
                                      [--first 60] [--threads N] [--json FILE]

A camera-like source (the ``LiveSource`` of an ``rtsp://`` spelling, read on its own capture thread,
newest frame kept) delivers a generated 320x240 texture video at a fixed ``--fps`` into
``run_stream`` (ONNX Runtime CPU, batch 1, JSON Lines events to a temporary file, as deployed). At
frame ``--first`` and then every ``--every`` frames, a thread of its own calls
``Pipeline.swap_model`` (what ``POST /api/model`` and ``adtr-edge swap`` call), alternating
A -> B -> A ..., ``--swaps`` times. A sink after the events sink records per frame: its index, the
digest of the model that scored it, and its end-to-end latency (the time the result reaches the
sink minus the frame's capture timestamp).

Reported per swap: the latency of the last frame on the old model and of the first on the new one,
the worst latency of the frames scored between the request and that last frame (while the new model
was loading beside the running one), the swap's load + check time (``record["load_s"]``: load,
warm-up on the stream's newest frame, digest) and the time the ``swap_model`` call took; against
the median and p90 latency of the frames no swap touched (those from a request to the first frame
on the new model are left out, and so are the first ``--warmup`` frames of the stream). Frames in =
captured up to the last one scored; dropped = captured but never scored (a live source keeps only
the newest frame when the stream falls behind).

Without --model/--model-b, two tiny models are trained and exported into a temporary folder with
the public API (generated tiles, 128x128 input, Lite0 stages at stride 8, d_model 64, 1+1 layers,
2 epochs; seeds 0 and 1, so the same graphs' shapes with other weights: a retrained model), about
10 s on 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from adtr_edge.bench import scripts
from adtr_edge.errors import AdtrError
from adtr_edge.runtime.review import model_digest
from adtr_edge.runtime.sinks import Sink

TINY_MODEL = dict(input_size=(128, 128), feature_stride=8, d_model=64, nhead=4, num_encoder_layers=1,
                  num_decoder_layers=1, dim_feedforward=128, pool_kernel=16)


def train_tiny_models(work: Path) -> tuple[Path, Path]:
    """Two exported folders of the same tiny architecture, trained with seeds 0 and 1."""
    from adtr_edge.config import ModelConfig, TrainConfig
    from adtr_edge.data.datasets import load_dataset
    from adtr_edge.data.generate import generate_sample_dataset
    from adtr_edge.export.onnx_export import export_checkpoint
    from adtr_edge.train.loop import train_model

    data = generate_sample_dataset(work / "data", n_train=24, n_test_good=1, n_test_defect=1, size=(128, 128), seed=0)
    out = []
    for name, seed in (("a", 0), ("b", 1)):
        cfg = TrainConfig(epochs=2, batch_size=8, lr=2e-3, val_fraction=0.2, device="cpu", head="per-location", seed=seed)
        train_model(load_dataset(data, "train"), ModelConfig(**TINY_MODEL), cfg, work / f"ckpt-{name}", progress=False)
        export_checkpoint(work / f"ckpt-{name}", work / f"model-{name}", opset=17)
        out.append(work / f"model-{name}")
    return out[0], out[1]


class PacedCamera:
    """A ``cv2.VideoCapture``-like camera: the frames of ``images`` in a loop, one every 1/fps s on
    a fixed schedule (a late read does not shift the next ones), as a camera delivers them."""

    def __init__(self, images: list, fps: float):
        self.images, self.period, self.n, self.t0 = images, 1.0 / fps, 0, None
        self.fps = fps

    def isOpened(self):
        return True

    def get(self, prop):
        import cv2

        return self.fps if prop == cv2.CAP_PROP_FPS else 0.0

    def read(self):
        if self.t0 is None:
            self.t0 = time.perf_counter()
        wait = self.t0 + self.n * self.period - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        image = self.images[self.n % len(self.images)].copy()
        self.n += 1
        return True, image

    def release(self):
        pass


class SwapBench(Sink):
    """Records (index, model digest, latency ms) of every frame; at each frame of ``plan`` (index ->
    folder) starts a thread that calls ``swap_model`` (the sink thread is not held)."""

    def __init__(self, plan: dict):
        self.plan, self.frames, self.swaps, self.threads = dict(plan), [], [], []

    def attach(self, pipeline):
        self.pipeline = pipeline

    def on_frame(self, r):
        latency_ms = (time.time() - r.frame.timestamp) * 1e3
        self.frames.append({"index": r.frame.index, "model": r.model, "latency_ms": round(latency_ms, 3)})
        target = self.plan.pop(r.frame.index, None)
        if target is not None:
            entry = {"trigger_frame": r.frame.index, "to": str(target)}
            self.swaps.append(entry)

            def swap():
                t0 = time.perf_counter()
                try:
                    record = self.pipeline.swap_model(target)
                except AdtrError as e:
                    entry["error"] = str(e)
                    return
                entry.update(call_s=round(time.perf_counter() - t0, 4), load_s=record["load_s"],
                             from_digest=record["from"]["digest"], to_digest=record["to"]["digest"],
                             at_frames=dict(record["at_frames"]))

            t = threading.Thread(target=swap, name="swap", daemon=True)
            self.threads.append(t)
            t.start()


def _p90(values: list[float]) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def summarize(frames: list[dict], swaps: list[dict], warmup: int = 10) -> dict:
    """Figures from the per-frame records (in the order the sink saw them) and the swaps.

    ``frames``: {"index", "model", "latency_ms"}; ``swaps``: {"trigger_frame", "to_digest",
    "load_s", ...} (a swap with "error" counts as failed). Per swap: the first frame after the
    trigger scored by the new model (``first``) and the frame scored just before it (``before``),
    their latencies, and the worst latency of the frames between the trigger and ``before`` (scored
    while the new model loaded beside the running one). The baseline (median, p90) is every frame
    from ``warmup`` on but those after a trigger up to the first on the new model."""
    indices = [f["index"] for f in frames]
    frames_in = max(indices) + 1 if indices else 0
    out = {"frames_in": frames_in, "frames_out": len(frames), "dropped": frames_in - len(set(indices)),
           "scored_twice": len(indices) - len(set(indices)), "in_order": indices == sorted(indices)}
    pos = {f["index"]: i for i, f in enumerate(frames)}
    special, rows = set(), []
    for s in swaps:
        row = {"trigger_frame": s["trigger_frame"], "to_digest": s.get("to_digest"), "load_s": s.get("load_s"),
               "call_s": s.get("call_s"), "error": s.get("error")}
        rows.append(row)
        if s.get("error") or s.get("trigger_frame") not in pos:
            continue
        start = pos[s["trigger_frame"]]
        first = next((i for i in range(start + 1, len(frames)) if frames[i]["model"] == s["to_digest"]), None)
        if first is None or first == 0:
            row["error"] = row["error"] or "no frame scored by the new model"
            continue
        before = first - 1
        special.update(range(start + 1, first + 1))
        loading = [frames[i]["latency_ms"] for i in range(start + 1, before)]
        row.update(first_frame=frames[first]["index"], before_frame=frames[before]["index"],
                   frames_while_loading=len(loading), before_ms=frames[before]["latency_ms"],
                   first_ms=frames[first]["latency_ms"], loading_max_ms=max(loading) if loading else None)
    rest = [f["latency_ms"] for i, f in enumerate(frames) if i not in special and f["index"] >= warmup]
    out["baseline"] = {"count": len(rest), "median_ms": statistics.median(rest) if rest else None,
                       "p90_ms": _p90(rest) if rest else None, "max_ms": max(rest) if rest else None}
    out["swaps"] = rows
    done = [r for r in rows if not r.get("error")]
    if done:
        spread = {}
        for key in ("before_ms", "first_ms", "load_s", "call_s"):
            v = [r[key] for r in done]
            spread[key] = {"min": min(v), "median": statistics.median(v), "max": max(v)}
        out["spread"] = spread
    out["failed_swaps"] = len(rows) - len(done)
    return out


def markdown(summary: dict) -> str:
    b = summary["baseline"]
    lines = ["| swap | to | first frame on the new model | latency of the frame before, ms | latency of the first frame, ms "
             "| worst latency while loading, ms | load + check s | swap_model call s |",
             "|---|---|---|---|---|---|---|---|"]
    for n, r in enumerate(summary["swaps"], 1):
        if r.get("error"):
            lines.append(f"| {n} | {r['to_digest']} | failed: {r['error']} | | | | | |")
            continue
        n_load = r["frames_while_loading"]
        loading = "-" if r["loading_max_ms"] is None else f"{r['loading_max_ms']:.1f} ({n_load} frame{'s' * (n_load > 1)})"
        lines.append(f"| {n} | {r['to_digest']} | {r['first_frame']} | {r['before_ms']:.1f} | {r['first_ms']:.1f} | "
                     f"{loading} | {r['load_s']:.3f} | {r['call_s']:.3f} |")
    lines += ["", "| measure | value |", "|---|---|",
              f"| frames in / out / dropped / scored twice | {summary['frames_in']} / {summary['frames_out']} / "
              f"{summary['dropped']} / {summary['scored_twice']} |",
              f"| frames no swap touched: latency median / p90 / max ms ({b['count']} frames) | {b['median_ms']:.1f} / {b['p90_ms']:.1f} / "
              f"{b['max_ms']:.1f} |"]
    if "spread" in summary:
        for key, label, fmt in (("before_ms", "frame before the swap, latency ms", "{:.1f}"),
                                ("first_ms", "first frame on the new model, latency ms", "{:.1f}"),
                                ("load_s", "load + check s", "{:.3f}"), ("call_s", "swap_model call s", "{:.3f}")):
            s = summary["spread"][key]
            lines.append(f"| {label}: min / median / max over {len(summary['swaps']) - summary['failed_swaps']} swaps | "
                         + " / ".join(fmt.format(s[k]) for k in ("min", "median", "max")) + " |")
    return "\n".join(lines)


def camera_images(work: Path, count: int = 60) -> list:
    import cv2

    from adtr_edge.data.generate import generate_video

    video = generate_video(work / "line.avi", n_frames=count, size=(240, 320), fps=30.0, defect_frames={20, 21, 22}).path
    cap, images = cv2.VideoCapture(str(video)), []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        images.append(image)
    cap.release()
    if not images:
        raise AdtrError(f"cannot read back the generated video {video}")
    return images


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="model A (an exported ONNX folder); default: train a tiny one")
    ap.add_argument("--model-b", type=Path, default=None, help="model B; default: train a tiny one")
    ap.add_argument("--fps", type=float, default=30.0, help="the camera's frame rate")
    ap.add_argument("--swaps", type=int, default=5, help="swaps, alternating A -> B -> A ...")
    ap.add_argument("--first", type=int, default=60, help="frame at which the first swap is asked for")
    ap.add_argument("--every", type=int, default=60, help="frames between two swaps")
    ap.add_argument("--warmup", type=int, default=10, help="first frames left out of the baseline")
    scripts.add_common_args(ap)
    args, threads = scripts.parse_and_start(ap, argv)
    if (args.model is None) != (args.model_b is None):
        ap.error("give both --model and --model-b, or neither")
    if args.swaps < 1 or args.every < 2 or args.first <= args.warmup:
        ap.error("need --swaps >= 1, --every >= 2 and --first > --warmup")
    from adtr_edge.runtime.pipeline import run_stream

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        a, b = (args.model, args.model_b) if args.model else train_tiny_models(tmp)
        built_s = time.perf_counter() - t0
        da, db = model_digest(a)["digest"], model_digest(b)["digest"]
        if da == db:
            raise SystemExit(f"{a} and {b} have the same graphs (digest {da}); a swap between them shows nothing")
        images = camera_images(tmp)
        plan = {args.first + k * args.every: (b if k % 2 == 0 else a) for k in range(args.swaps)}
        total = args.first + args.swaps * args.every
        print(f"model A {a} ({da}), model B {b} ({db}){'' if args.model else f', trained + exported in {built_s:.1f} s'}")
        print(f"camera {images[0].shape[1]}x{images[0].shape[0]} at {args.fps:g} fps, {total} frames; swaps at frames "
              f"{sorted(plan)}; ONNX Runtime CPU, {threads} intra-op thread(s)", flush=True)
        bench = SwapBench(plan)
        stream = run_stream(a, "rtsp://bench/line", backend="onnxruntime", events=tmp / "events.jsonl", max_frames=total,
                            opener=lambda target, api: PacedCamera(images, args.fps),
                            backend_options={"intra_op_threads": threads}, extra_sinks=[bench], print_summary=False,
                            handle_signals=False)
        for t in bench.threads:
            t.join(30)
    summary = summarize(bench.frames, bench.swaps, args.warmup)
    print()
    print(markdown(summary))
    result = {"models": {"a": {"path": str(a), "digest": da}, "b": {"path": str(b), "digest": db}},
              "fps": args.fps, "threads": threads, "plan": {str(k): str(v) for k, v in plan.items()},
              "summary": summary, "frames": bench.frames, "swaps": bench.swaps,
              "stream": {k: stream.get(k) for k in ("frames", "drops", "fps", "errors", "swaps", "model")}}
    if summary["dropped"] or summary["scored_twice"] or summary["failed_swaps"]:
        print(f"\nWARNING: {summary['dropped']} dropped, {summary['scored_twice']} scored twice, "
              f"{summary['failed_swaps']} failed swaps")
    return scripts.finish(args, result)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
