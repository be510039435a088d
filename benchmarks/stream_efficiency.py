"""Stream end-to-end FPS vs pure inference FPS of the same graphs, and memory over a long run.

    python benchmarks/stream_efficiency.py [--frames 600] [--threads N] [--json FILE]

A 640x480 video (generated) is looped by the capture source until --frames frames have gone
through ``run_stream`` (ONNX Runtime, batch 1, JSON Lines events to a file, as a deployment would).
In the same process, the same two graphs then run on a prepared batch with nothing around them:
pipeline efficiency = stream FPS / inference FPS. RSS is sampled at the first frame, at the middle
and at the end of the stream to show memory stays flat.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from adtr_edge.bench import camera_frame, rss_mb, scripts, summarize
from adtr_edge.bench.scripts import LoopingCapture
from adtr_edge.config import ModelConfig
from adtr_edge.data.generate import generate_video
from adtr_edge.preprocessing import prepare_batch
from adtr_edge.runtime.loading import load_backend
from adtr_edge.runtime.pipeline import run_stream
from adtr_edge.runtime.sinks import Sink


class RssSampler(Sink):
    """Records RSS at chosen frame indices (the sink thread sees every frame)."""

    def __init__(self, at: set[int]):
        self.at, self.samples = at, {}

    def on_frame(self, result) -> None:
        if result.frame.index in self.at:
            self.samples[result.frame.index] = round(rss_mb(), 1)


def pure_inference(export: Path, threads: int, seconds: float) -> list[float]:
    """Milliseconds of backend.infer calls on one prepared frame for about ``seconds``."""
    backend = load_backend(export, "onnxruntime", intra_op_threads=threads)
    try:
        images = prepare_batch([camera_frame()], backend.meta.preprocess)
        backend.infer(images)  # warm-up
        times, t_end = [], time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            backend.infer(images)
            times.append((time.perf_counter() - t0) * 1e3)
        return times
    finally:
        backend.deactivate()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=600)
    scripts.add_common_args(ap)
    args, threads = scripts.parse_and_start(ap, argv)
    _, export = scripts.make_export(ModelConfig(), args.work)
    video = args.work / "stream-640x480.avi"
    if not video.is_file():
        video = generate_video(video, n_frames=100, size=(480, 640), fps=30.0, defect_frames={40, 41, 42}).path
    n = args.frames
    print(f"model {export} (Lite0 256x256, stages 1,2,3, 4+4 layers); video {video} looped to {n} frames; threads {threads}")
    marks = {0, n // 2, n - 1}
    sampler = RssSampler(marks)
    # Pure inference of the same graphs (same threads, same process) just before and just after the
    # stream, so a change in machine load during the run shows up as a gap between the two.
    seconds = max(8.0, n / 40)
    infer_before = pure_inference(export, threads, seconds)
    rss_start = rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        summary = run_stream(export, str(video), backend="onnxruntime", events=Path(tmp) / "events.jsonl",
                             max_frames=n, opener=lambda target, api: LoopingCapture(target, api, n),
                             backend_options={"intra_op_threads": threads}, extra_sinks=[sampler], print_summary=False,
                             handle_signals=False)
    rss_end = rss_mb()
    infer_after = pure_inference(export, threads, seconds)
    stream_fps = summary["fps"]
    infer = summarize(infer_before + infer_after)
    infer_fps = 1e3 / infer["mean"]
    print("\n| measure | value |\n|---|---|")
    print(f"| stream frames | {summary['frames']} (drops {summary['drops']}, errors {len(summary['errors'])}) |")
    print(f"| stream FPS (capture + decode + preprocess + inference + postprocess + events) | {stream_fps:.2f} |")
    print(f"| pure inference FPS (backend.infer, batch 1, {infer['count']} calls before + after) | {infer_fps:.2f} "
          f"(before {1e3 / summarize(infer_before)['mean']:.2f}, after {1e3 / summarize(infer_after)['mean']:.2f}) |")
    print(f"| pipeline efficiency (stream / inference) | {stream_fps / infer_fps:.2f} |")
    st = summary["stages_ms"]
    for name in ("preprocess", "backbone", "transformer", "postprocess"):
        if name in st and st[name]["count"]:
            print(f"| stream stage {name} ms mean / p50 / p95 | {st[name]['mean']:.2f} / {st[name]['p50']:.2f} / {st[name]['p95']:.2f} |")
    print(f"| RSS before the stream MB | {rss_start:.1f} |")
    for i in sorted(sampler.samples):
        print(f"| RSS at frame {i} MB | {sampler.samples[i]} |")
    print(f"| RSS after the stream MB | {rss_end:.1f} |")
    result = {"frames": n, "threads": threads, "stream_summary": summary, "inference_ms": infer, "inference_fps": infer_fps,
              "stream_fps": stream_fps, "efficiency": stream_fps / infer_fps,
              "rss_mb": {"before": rss_start, "frames": sampler.samples, "after": rss_end}}
    return scripts.finish(args, result)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
