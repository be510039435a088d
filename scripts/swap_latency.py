"""What a model swap costs a running stream: a video played as a paced live camera streams through
model A; part-way, model B is swapped in (``Pipeline.swap_model``, what ``POST /api/model`` and
``--follow-model`` call). Prints the frames scored and dropped with and without the swap, the
capture-to-result latency of the first frame B scored against A's median, and how long B took to
load and warm up (beside the running stream, not in it).

    python scripts/swap_latency.py MODEL_A MODEL_B VIDEO [--fps 15] [--swap-at 60] [--threads 1] [--frames 200]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import cv2
import numpy as np

from adtr_edge.runtime.pipeline import run_stream
from adtr_edge.runtime.sinks import Sink


class PacedVideo:
    """A video file read at ``fps`` like a camera (live: frames that inference cannot take are dropped)."""

    def __init__(self, path, fps):
        self.cap, self.period, self.next = cv2.VideoCapture(str(path)), 1.0 / fps, time.monotonic()

    def isOpened(self):
        return self.cap.isOpened()

    def read(self):
        self.next += self.period
        time.sleep(max(0.0, self.next - time.monotonic()))
        return self.cap.read()

    def get(self, prop):
        return 0.0

    def release(self):
        self.cap.release()


class Measure(Sink):
    def __init__(self, swap_to=None, at=60):
        self.swap_to, self.at = swap_to, at
        self.latency, self.models, self.record, self.thread = [], [], None, None

    def attach(self, pipeline):
        self.pipeline = pipeline

    def on_frame(self, r):
        self.latency.append((time.time() - r.frame.timestamp) * 1e3)
        self.models.append(r.model)
        if self.swap_to and self.thread is None and len(self.latency) == self.at:
            self.thread = threading.Thread(target=lambda: setattr(self, "record", self.pipeline.swap_model(self.swap_to)))
            self.thread.start()


def run(model, video, fps, threads, frames, swap_to=None, at=60):
    m = Measure(swap_to, at)
    s = run_stream(model, "rtsp://paced/video", backend="onnxruntime", opener=lambda t, api: PacedVideo(video, fps), max_frames=frames,
                   backend_options={"intra_op_threads": threads}, extra_sinks=[m], print_summary=False, handle_signals=False)
    if m.thread is not None:
        m.thread.join()
    return s, m


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_a")
    ap.add_argument("model_b")
    ap.add_argument("video")
    ap.add_argument("--fps", type=float, default=15.0)
    ap.add_argument("--swap-at", type=int, default=60, help="frames scored by A before the swap is asked for")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--frames", type=int, default=200, help="frames to score in each run (fewer than the video has)")
    args = ap.parse_args(argv[1:])
    base, mb = run(args.model_a, args.video, args.fps, args.threads, args.frames)
    swap, ms = run(args.model_a, args.video, args.fps, args.threads, args.frames, swap_to=args.model_b, at=args.swap_at)
    first = next(i for i, d in enumerate(ms.models) if d == ms.record["to"]["digest"])
    before = np.array(ms.latency[:first])
    out = {
        "fps": args.fps, "threads": args.threads,
        "without_swap": {"frames": base["frames"], "drops": base["drops"], "latency_p50_ms": round(float(np.median(mb.latency)), 1)},
        "with_swap": {"frames": swap["frames"], "drops": swap["drops"], "swaps": len(swap["swaps"]),
                      "load_and_check_s": ms.record["load_s"],
                      "latency_p50_before_ms": round(float(np.median(before)), 1),
                      "latency_p95_before_ms": round(float(np.percentile(before, 95)), 1),
                      "latency_first_new_frame_ms": round(ms.latency[first], 1),
                      "latency_next_4_ms": [round(x, 1) for x in ms.latency[first + 1: first + 5]],
                      "latency_p50_after_ms": round(float(np.median(ms.latency[first:])), 1)},
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
