"""Stream FPS with the web view open and a browser-like client reading its MJPEG, vs the same
stream with nobody watching, in one run.

    python benchmarks/web_view_fps.py [--phase-s 15] [--rounds 3] [--model default|tiny] [--json FILE]

One ``run_stream`` of a 640x480 generated video (looped, every frame decoded, ONNX Runtime, batch
1) with ``--http`` on. The run alternates phases: no client / one client reading
``/stream.mjpg`` as fast as the server sends it; FPS per phase comes from the pipeline's own frame
counter at the phase boundaries. Alternating phases (rather than two runs) keeps a change in the
machine's load from looking like the web view's cost. Ratio = FPS with the client / FPS without;
the issue's floor is 0.95.

``--model default``: ``ModelConfig()`` (Lite0 256x256, stages 1-3, 4+4 layers, d256; untrained
weights, speed does not depend on training), the model ``stream_efficiency.py`` streams. ``--model tiny``: the tests' stand-in brightness graphs (tests/runtime_fakes.py), so
the stream runs at over a hundred FPS and the web view's share of the CPU is as large as it gets
(the worst case).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

from adtr_edge.bench import scripts
from adtr_edge.bench.scripts import LoopingCapture
from adtr_edge.config import ModelConfig
from adtr_edge.data.generate import generate_video
from adtr_edge.runtime.pipeline import run_stream
from adtr_edge.runtime.web.frontend import Frontend


class MjpegClient:
    """Reads /stream.mjpg on a thread until stopped, counting the JPEG parts it receives."""

    def __init__(self, url: str):
        self.url, self.parts, self.bytes = url, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with urllib.request.urlopen(self.url, timeout=30) as r:
            while not self._stop.is_set():
                line = r.readline()
                if line.lower().startswith(b"content-length:"):
                    n = int(line.split(b":")[1])
                    while r.readline().strip():  # the part's other headers, up to the blank line
                        pass
                    self.bytes += len(r.read(n))
                    self.parts += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def tiny_export(work: Path) -> Path:
    write_fake_export = scripts.from_checkout("tests/runtime_fakes.py").write_fake_export

    out = work / "fake-export"
    return out if (out / "manifest.json").is_file() else write_fake_export(out)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phase-s", type=float, default=15.0, help="seconds per phase")
    ap.add_argument("--rounds", type=int, default=3, help="(no client, client) pairs")
    ap.add_argument("--model", choices=("default", "tiny"), default="default")
    scripts.add_common_args(ap)
    args, threads = scripts.parse_and_start(ap, argv)
    args.work.mkdir(parents=True, exist_ok=True)
    export = scripts.make_export(ModelConfig(), args.work)[1] if args.model == "default" else tiny_export(args.work)
    video = args.work / "stream-640x480.avi"
    if not video.is_file():
        video = generate_video(video, n_frames=100, size=(480, 640), fps=30.0, defect_frames={40, 41, 42}).path
    print(f"model {export} ({args.model}); video {video} looped; threads {threads}; "
          f"{args.rounds} x (no client {args.phase_s:.0f} s, MJPEG client {args.phase_s:.0f} s)", flush=True)

    fe = Frontend(export, http="127.0.0.1:0", announce=False)
    out: dict = {}
    runner = threading.Thread(target=lambda: out.update(summary=run_stream(
        export, str(video), backend="onnxruntime", opener=lambda target, api: LoopingCapture(target, api, 10 ** 9),
        backend_options={"intra_op_threads": threads}, extra_sinks=[fe], print_summary=False, handle_signals=False)))
    runner.start()
    while fe.pipeline is None or fe.pipeline.processed < 5:  # past the first frames' warm-up
        time.sleep(0.05)
    phases = []
    try:
        for _ in range(args.rounds):
            for watched in (False, True):
                client = MjpegClient(fe.http.url + "stream.mjpg") if watched else None
                if client is not None:
                    time.sleep(0.5)  # the first part is on its way: the encoder runs from here
                n0, t0, e0 = fe.pipeline.processed, time.perf_counter(), fe.encoder.encoded
                time.sleep(args.phase_s)
                n1, t1, e1 = fe.pipeline.processed, time.perf_counter(), fe.encoder.encoded
                parts = client.parts if client is not None else 0
                if client is not None:
                    client.stop()
                phases.append({"client": watched, "frames": n1 - n0, "seconds": t1 - t0, "fps": (n1 - n0) / (t1 - t0),
                               "jpegs_encoded": e1 - e0, "parts_received": parts})
                p = phases[-1]
                print(f"  {'client   ' if watched else 'no client'}  {p['fps']:8.2f} FPS  ({p['frames']} frames, "
                      f"{p['jpegs_encoded']} JPEGs encoded, {parts} parts received)", flush=True)
    finally:
        fe.pipeline.stop("benchmark done")
        runner.join()
        fe.close()
    without = [p["fps"] for p in phases if not p["client"]]
    with_client = [p["fps"] for p in phases if p["client"]]
    pair_ratios = [b / a for a, b in zip(without, with_client)]
    total = lambda watched: (sum(p["frames"] for p in phases if p["client"] == watched)
                             / sum(p["seconds"] for p in phases if p["client"] == watched))
    ratio = total(True) / total(False)
    print("\n| measure | value |\n|---|---|")
    print(f"| stream FPS, web view on, no client | {total(False):.2f} (phases: {', '.join(f'{x:.2f}' for x in without)}) |")
    print(f"| stream FPS, web view on, one MJPEG client | {total(True):.2f} (phases: {', '.join(f'{x:.2f}' for x in with_client)}) |")
    print(f"| ratio client / no client (all phases) | {ratio:.3f} (per pair: {', '.join(f'{x:.3f}' for x in pair_ratios)}; "
          f"median {statistics.median(pair_ratios):.3f}) |")
    rate = [p["parts_received"] / p["seconds"] for p in phases if p["client"]]
    print(f"| JPEG parts the client received per second | {statistics.mean(rate):.1f} (encoder cap 10) |")
    print(f"| floor 0.95 met | {'yes' if ratio >= 0.95 else 'NO'} |")
    return scripts.finish(args, {"model": args.model, "threads": threads, "phases": phases, "ratio": ratio,
                                 "pair_ratios": pair_ratios, "summary": out.get("summary")})


if __name__ == "__main__":
    sys.exit(main(sys.argv))
