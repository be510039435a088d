"""Four cameras through one model (one `adtr-edge stream`, batched) vs four `adtr-edge stream` processes.

    python benchmarks/multi_source.py [--cameras 4] [--camera-fps 0.5,4] [--seconds 30] [--rounds 2]
                                      [--threads-total 4] [--json FILE]

The cameras are real network streams: this script serves each as MJPEG over HTTP
(multipart/x-mixed-replace, what many IP cameras offer) from a generated 640x480 video, paced at
``--camera-fps``, and OpenCV's FFmpeg backend reads them as live sources (newest frame kept, stale
ones dropped and counted). Both configurations run the same command line tool with ONNX Runtime on
the CPU and the same total number of intra-op threads:

- batched:  one process, ``--source cam0=URL0 ... --source cam3=URL3 --threads T``;
- separate: four processes, one ``--source`` each, ``--threads T/4``;
- the batched process again with ``--no-spin`` (ONNX Runtime's idle threads sleep instead of
  spinning), and with ``--threads 1`` (one inference thread, as each separate process has).

Measured per configuration, after every stream has produced its first frame, over ``--seconds``:
total FPS (frames whose capture time falls in the window, all cameras, from the events files),
latency per frame from capture to result (p50/p95 from each process's summary), drops, the CPU
time the processes used in the window (cores used; frames per CPU-second, the figure a shared
machine's load disturbs least) and their resident memory. The configurations alternate for ``--rounds`` rounds, so a
change in machine load hits both.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.server
import json
import os
import signal
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2

from adtr_edge.bench import scripts
from adtr_edge.config import ModelConfig
from adtr_edge.data.generate import generate_video

REPO = Path(__file__).resolve().parents[1]


def jpeg_frames(video: Path) -> list[bytes]:
    cap = cv2.VideoCapture(str(video))
    out = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        out.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes())
    cap.release()
    return out


class MjpegCameras:
    """HTTP server: /cam/N.mjpg is an endless MJPEG stream at ``fps`` (frames on an absolute
    schedule, so a slow reader falls behind instead of slowing the camera)."""

    def __init__(self, frames: list[bytes], fps: float):
        cams = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                t0, i = time.perf_counter(), 0
                try:
                    while not cams.closing.is_set():
                        data = cams.frames[i % len(cams.frames)]
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data)
                                         + data + b"\r\n")
                        self.wfile.flush()
                        i += 1
                        delay = t0 + i / cams.fps - time.perf_counter()
                        if delay > 0:
                            time.sleep(delay)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.frames, self.fps = frames, fps
        self.closing = threading.Event()
        socketserver.ThreadingTCPServer.daemon_threads = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.port}/cam/{i}.mjpg"

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_s(pid: int) -> float:
    """User + system CPU time of a process (all its threads), seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def epoch(iso: str) -> float:
    return dt.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc).timestamp()


def frame_times(events: Path) -> list[tuple[str, float]]:
    out = []
    for line in events.read_text().splitlines():
        try:
            e = json.loads(line)
        except json.JSONDecodeError:  # a line being written right now
            continue
        if e.get("event") == "frame":
            out.append((e["source"], epoch(e["time"])))
    return out


def run_config(export: Path, cams: MjpegCameras, groups: list[list[int]], threads: int, seconds: float, work: Path,
               extra: list[str]) -> dict:
    """One process per group of camera indices; returns the measured figures."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = []
    for g, group in enumerate(groups):
        ev, summ = work / f"events-{g}.jsonl", work / f"summary-{g}.json"
        cmd = [sys.executable, str(REPO / "cli.py"), "stream", str(export), "--backend", "onnxruntime",
               "--threads", str(threads), "--events", str(ev), "--summary", str(summ), "--reconnect-attempts", "3", *extra]
        for i in group:
            cmd += ["--source", f"cam{i}={cams.url(i)}"]
        procs.append((subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True),
                      ev, summ, group))
    try:
        return _measure(procs, groups, seconds)
    finally:
        for p, *_ in procs:  # after a failure: no stream left behind
            if p.poll() is None:
                p.kill()
                p.wait()


def _measure(procs: list, groups: list[list[int]], seconds: float) -> dict:
    # Warm-up: every camera has produced a frame through its stream.
    deadline = time.time() + 180
    while True:
        seen = set()
        for p, ev, _, _ in procs:
            if p.poll() is not None:
                raise SystemExit(f"stream exited early: {p.stderr.read()}")
            if ev.exists():
                seen |= {s for s, _ in frame_times(ev)}
        if len(seen) == sum(len(g) for g in groups):
            break
        if time.time() > deadline:
            raise SystemExit("streams did not start within 180 s")
        time.sleep(0.2)
    t0, cpu0 = time.time(), sum(cpu_s(p.pid) for p, *_ in procs)
    time.sleep(seconds / 2)
    rss = sum(rss_mb(p.pid) for p, *_ in procs)
    time.sleep(seconds / 2)
    t1, cpu1 = time.time(), sum(cpu_s(p.pid) for p, *_ in procs)
    for p, *_ in procs:
        p.send_signal(signal.SIGINT)
    summaries, frames = [], 0
    for p, ev, summ, _ in procs:
        _, err = p.communicate(timeout=120)
        if p.returncode != 0:
            raise SystemExit(f"stream failed (rc {p.returncode}): {err[-2000:]}")
        summaries.append(json.loads(summ.read_text()))
        frames += sum(t0 <= t < t1 for _, t in frame_times(ev))
    lat = [s["latency_ms"] for s in summaries]
    return {"processes": len(groups), "fps_total": frames / (t1 - t0), "frames_in_window": frames,
            "window_s": t1 - t0, "latency_p50_ms": statistics.median(x["p50"] for x in lat),
            "latency_p95_ms": max(x["p95"] for x in lat), "drops": sum(s["drops"] for s in summaries),
            "frames": sum(s["frames"] for s in summaries), "rss_mb": rss, "cpu_s": cpu1 - cpu0,
            "cores_used": (cpu1 - cpu0) / (t1 - t0), "frames_per_cpu_s": frames / max(cpu1 - cpu0, 1e-9),
            "per_process": [{"latency_ms": s["latency_ms"], "frames": s["frames"], "drops": s["drops"], "fps": s["fps"],
                             "stages_ms": s["stages_ms"]} for s in summaries]}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--camera-fps", default="0.5,4", help="comma-separated frame rates per camera")
    ap.add_argument("--seconds", type=float, default=30.0, help="measured window per configuration and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads-total", type=int, default=4, help="intra-op threads of the batched process = sum over the separate ones")
    ap.add_argument("--no-single-thread-batched", dest="single_thread_batched", action="store_false",
                    help="skip the third configuration (the batched process with one thread)")
    scripts.add_common_args(ap)
    args, _ = scripts.parse_and_start(ap, argv)
    n, total = args.cameras, args.threads_total
    if total % n:
        raise SystemExit(f"--threads-total {total} must be a multiple of --cameras {n} (fair split)")
    _, export = scripts.make_export(ModelConfig(), args.work)
    video = args.work / "multi-640x480.avi"
    if not video.is_file():
        video = generate_video(video, n_frames=60, size=(480, 640), fps=10.0, defect_frames={20, 21, 22}).path
    frames = jpeg_frames(video)
    configs = {f"batched, 1 process x {total} threads": ([list(range(n))], total, []),
               f"batched, 1 process x {total} threads, --no-spin": ([list(range(n))], total, ["--no-spin"]),
               f"separate, {n} processes x {total // n} threads": ([[i] for i in range(n)], total // n, [])}
    if args.single_thread_batched and total != 1:
        configs["batched, 1 process x 1 thread"] = ([list(range(n))], 1, [])
    print(f"model {export} (untrained default config, ONNX Runtime CPU); {n} MJPEG cameras 640x480; "
          f"{total} intra-op threads in total; window {args.seconds:g} s; {args.rounds} rounds", flush=True)
    results: dict = {}
    for fps in [float(x) for x in args.camera_fps.split(",")]:
        cams = MjpegCameras(frames, fps)
        try:
            for r in range(args.rounds):
                for name, (groups, threads, extra) in configs.items():
                    with tempfile.TemporaryDirectory() as tmp:
                        res = run_config(export, cams, groups, threads, args.seconds, Path(tmp), extra)
                    results.setdefault(f"{fps:g}", {}).setdefault(name, []).append(res)
                    print(f"  {fps:g} fps/camera, round {r + 1}, {name}: {res['fps_total']:.2f} FPS, latency p50 "
                          f"{res['latency_p50_ms']:.0f} / p95 {res['latency_p95_ms']:.0f} ms, drops {res['drops']}, "
                          f"{res['cores_used']:.2f} cores, {res['frames_per_cpu_s']:.2f} frames per CPU-s", flush=True)
        finally:
            cams.close()
    print(f"\n| camera rate (x{n}) | configuration | total FPS (rounds) | latency p50 ms | latency p95 ms | drops | "
          "CPU cores used | frames per CPU-s | RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for fps, by_cfg in results.items():
        for name, runs in by_cfg.items():
            fpss = [x["fps_total"] for x in runs]
            print(f"| {fps} fps | {name} | {statistics.median(fpss):.2f} ({', '.join(f'{v:.2f}' for v in fpss)}) | "
                  f"{statistics.median(x['latency_p50_ms'] for x in runs):.0f} | {max(x['latency_p95_ms'] for x in runs):.0f} | "
                  f"{sum(x['drops'] for x in runs)} | {statistics.median(x['cores_used'] for x in runs):.2f} | "
                  f"{statistics.median(x['frames_per_cpu_s'] for x in runs):.2f} | {statistics.median(x['rss_mb'] for x in runs):.0f} |")
    return scripts.finish(args, {"cameras": n, "threads_total": total, "seconds": args.seconds, "results": results})


if __name__ == "__main__":
    sys.exit(main(sys.argv))
