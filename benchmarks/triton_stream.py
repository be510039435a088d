"""Stream through a Triton server vs in-process ONNX Runtime on the same CPU: FPS, latency, bytes per frame.

    python benchmarks/triton_stream.py [--frames 40] [--streams 1,4] [--json FILE]

The default model (Lite0 256x256, untrained: speed does not depend on training) is exported as the
``python`` flavour of ``adtr-edge export-triton`` and served by the real ``tritonserver`` of the
nvidia-pytriton wheel (tests/triton_server.py; its python backend runs ONNX Runtime). For 1 and 4
concurrent streams (threads of this process, each a ``run_stream`` of the same generated 640x480
video), it reports the aggregate FPS and the p50/p95 of the per-batch inference time: the gRPC round
trip for triton, backbone + transformer for in-process. With 4 streams the server's dynamic batching
merges their requests (the mean batch it formed is read from the server's statistics); in-process
each stream gets threads/4 ONNX Runtime threads.

Bytes per frame on the wire are counted, not computed: the client talks to the server through a
TCP relay on localhost that counts every byte each way (gRPC and HTTP framing included).
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np

from adtr_edge.bench import scripts, summarize
from adtr_edge.config import ModelConfig
from adtr_edge.data.generate import generate_video
from adtr_edge.export.triton_repo import TritonOptions, export_triton
from adtr_edge.runtime.detector import Detector
from adtr_edge.runtime.pipeline import run_stream
from adtr_edge.runtime.sinks import Sink

_triton = scripts.from_checkout("tests/triton_server.py")  # the tests' server: the pytriton wheel in its own venv
TritonServer, ensure_venv = _triton.TritonServer, _triton.ensure_venv


class InferTimes(Sink):
    """The inference time of each frame's batch (ms), as the backend measured it."""

    def __init__(self):
        self.ms: list[float] = []

    def on_frame(self, r) -> None:
        t = r.detection.timings
        self.ms.append(t["triton"] if "triton" in t else t["backbone"] + t["transformer"])


class CountingRelay:
    """localhost:port -> upstream, counting bytes in each direction."""

    def __init__(self, upstream_port: int):
        self.upstream = ("127.0.0.1", upstream_port)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sent = self.received = 0  # client -> server, server -> client
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                dst.sendall(data)
                with self._lock:
                    if up:
                        self.sent += len(data)
                    else:
                        self.received += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def reset(self) -> None:
        with self._lock:
            self.sent = self.received = 0


def run_streams(n: int, export: Path, video: Path, backend: str, options: dict) -> dict:
    sinks = [InferTimes() for _ in range(n)]
    summaries: list[dict] = [None] * n

    def one(i: int) -> None:
        summaries[i] = run_stream(export, str(video), backend=backend, backend_options=dict(options), extra_sinks=[sinks[i]],
                                  print_summary=False, handle_signals=False)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    frames = sum(s["frames"] for s in summaries)
    errors = [e for s in summaries for e in s["errors"]]
    lat = summarize([ms for s in sinks for ms in s.ms])
    return {"streams": n, "backend": backend, "frames": frames, "wall_s": round(wall, 2), "fps": round(frames / wall, 2),
            "p50_ms": round(lat["p50"], 1), "p95_ms": round(lat["p95"], 1), "errors": errors}


def batch_counts(url: str, model: str) -> tuple[int, int]:
    """(inferences, executions) the server counted for ``model``: their ratio is the mean batch
    size its dynamic batcher formed."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        st = client.get_inference_statistics(model_name=model, as_json=True)["model_stats"][0]
    finally:
        client.close()
    return int(st.get("inference_count", 0)), int(st.get("execution_count", 0))


def wire_bytes(export: Path, relay: CountingRelay, url: str, protocol: str, frames: list, repeats: int) -> dict:
    with Detector.load(export, backend="triton", server=url, protocol=protocol) as det:
        det(frames[0])  # connection set-up and the metadata check are not per-frame traffic
        relay.reset()
        before = dict(det.backend.wire_bytes)
        for i in range(repeats):
            det(frames[i % len(frames)])
        sent, received = relay.sent, relay.received
        payload = {k: v - before[k] for k, v in det.backend.wire_bytes.items()}
    return {"protocol": protocol, "frames": repeats, "sent_per_frame": round(sent / repeats), "received_per_frame": round(received / repeats),
            "tensor_bytes_sent_per_frame": round(payload["sent"] / repeats),
            "tensor_bytes_received_per_frame": round(payload["received"] / repeats)}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=40, help="frames per stream")
    ap.add_argument("--streams", default="1,4", help="concurrent stream counts to measure")
    ap.add_argument("--instances", type=int, default=1, help="server instances per member model (threads are split among them)")
    scripts.add_common_args(ap)
    args, threads = scripts.parse_and_start(ap, argv)
    counts = [int(c) for c in args.streams.split(",")]
    _, export = scripts.make_export(ModelConfig(), args.work, opset=17)
    bench = args.work / "triton-stream"
    video = bench / f"line-{args.frames}.avi"
    if not video.is_file():
        video = generate_video(video, n_frames=args.frames, size=(480, 640), fps=30.0, defect_frames={args.frames // 2}).path
    repo = bench / "repo"
    per_instance = max(1, threads // args.instances)
    export_triton(export, repo, TritonOptions(flavour="python", threads=per_instance, instances=args.instances), force=True)
    print(f"model {export} (Lite0 256x256); video {video} ({args.frames} frames 640x480); threads {threads}; "
          f"server: pytriton tritonserver, python flavour, {args.instances} instance(s) per member x {per_instance} ORT threads, "
          "dynamic batching (max batch 8, 2 ms queue delay)")
    server = TritonServer(repo, ensure_venv(), log_dir=bench / "logs").start()
    rows, wire = [], []
    try:
        relay = CountingRelay(server.grpc_port)
        http_relay = CountingRelay(server.http_port)
        for n in counts:
            rows.append(run_streams(n, export, video, "onnxruntime", {"intra_op_threads": max(1, threads // n)}))
            before = batch_counts(server.grpc_url, "adtr_backbone")
            rows.append(run_streams(n, export, video, "triton", {"server": server.grpc_url}))
            after = batch_counts(server.grpc_url, "adtr_backbone")
            executions = after[1] - before[1]
            rows[-1]["server_mean_batch"] = round((after[0] - before[0]) / executions, 2) if executions else None
        import cv2

        cap = cv2.VideoCapture(str(video))
        frames = [cap.read()[1] for _ in range(4)]
        cap.release()
        wire.append(wire_bytes(export, relay, f"127.0.0.1:{relay.port}", "grpc", frames, 10))
        wire.append(wire_bytes(export, http_relay, f"127.0.0.1:{http_relay.port}", "http", frames, 10))
    finally:
        server.stop()
    print("\n| streams | backend | frames | wall s | FPS (all streams) | inference ms p50 | p95 | server mean batch |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['streams']} | {r['backend']} | {r['frames']} | {r['wall_s']} | {r['fps']} | {r['p50_ms']} | {r['p95_ms']} | "
              f"{r.get('server_mean_batch') or '-'} |"
              + (f" errors: {r['errors']}" if r["errors"] else ""))
    print("\n| protocol | bytes/frame client -> server | server -> client | tensor payload out / back |\n|---|---|---|---|")
    for w in wire:
        print(f"| {w['protocol']} | {w['sent_per_frame']} | {w['received_per_frame']} | "
              f"{w['tensor_bytes_sent_per_frame']} / {w['tensor_bytes_received_per_frame']} |")
    h, w_ = 256, 256
    print(f"\n(images uint8 {h}x{w_}x3 = {h * w_ * 3} B; anomaly_map float32 1x{h}x{w_} + score = {h * w_ * 4 + 4} B; "
          f"float32 images would be {h * w_ * 12} B)")
    return scripts.finish(args, {"rows": rows, "wire": wire, "threads": threads, "frames_per_stream": args.frames,
                                 "numpy": np.__version__})


if __name__ == "__main__":
    sys.exit(main(sys.argv))
