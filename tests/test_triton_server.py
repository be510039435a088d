"""``--backend triton`` against a real Triton Inference Server (the nvidia-pytriton wheel's
``tritonserver`` with its python backend, tests/triton_server.py) serving the ``python`` flavour
of ``adtr-edge export-triton``: scores equal in-process ONNX Runtime, a killed and restarted server
is reconnected and the gap reported, and a server holding another model is refused in one line."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from adtr_edge.cli import main
from adtr_edge.errors import AdtrError
from adtr_edge.export.triton_repo import TritonOptions, export_triton
from adtr_edge.runtime.backends.triton import parse_server
from adtr_edge.runtime.detector import Detector
from adtr_edge.runtime.pipeline import run_stream
from adtr_edge.runtime.sinks import Sink
from tests.runtime_fakes import write_fake_export
from tests.triton_server import TritonServer, Unavailable, ensure_venv, free_port

pytest.importorskip("tritonclient.grpc", reason="tritonclient not installed (pip install -e '.[triton]')")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed (the in-process reference)")

FRAMES = 36
DEFECTS = {8, 9, 10, 24}
TOL = 1e-5


def test_server_addresses_and_options_are_checked_before_connecting(exported_model, capsys):
    assert parse_server("gpu-rack", "grpc") == ("grpc", "gpu-rack:8001")
    assert parse_server("gpu-rack", "http") == ("http", "gpu-rack:8000")
    assert parse_server("http://10.0.0.5:9000/", "grpc") == ("http", "10.0.0.5:9000")
    assert parse_server("grpc://[::1]:8001", "http") == ("grpc", "[::1]:8001")
    for bad, needle in (("ftp://x:1", "scheme 'ftp'"), ("host:port", "expected HOST[:PORT]"), ("h:70000", "expected HOST[:PORT]")):
        with pytest.raises(AdtrError, match=needle.replace("[", r"\[").replace("]", r"\]")):
            parse_server(bad, "grpc")
    with pytest.raises(AdtrError, match="--protocol 'udp'"):
        parse_server("h", "udp")
    # A spelling that parses (source names are resolved before the model loads) but is never opened:
    # the options fail first.
    base = ["stream", str(exported_model), "--source", "rtsp://127.0.0.1:9/never-opened"]
    for args, needle in ((["--server", "h:1"], "--server applies to --backend triton only"),
                         (["--backend", "triton", "--server", "h:1", "--threads", "2"], "do not apply to the triton backend"),
                         (["--backend", "triton", "--server", "h:1", "--server-timeout", "0"], "--server-timeout must be > 0")):
        assert main(base + args) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err


class Collect(Sink):
    """Exact per-frame scores (the events file rounds to 6 decimals)."""

    def __init__(self):
        self.scores: dict[int, float] = {}

    def on_frame(self, r) -> None:
        self.scores[r.frame.index] = r.detection.score


@pytest.fixture(scope="module")
def venv():
    try:
        return ensure_venv()
    except Unavailable as e:
        pytest.skip(f"no Triton server here: {e}")


def _merge_repo(dest: Path, parts: list[Path]) -> Path:
    """One repository holding the models of several exports (Triton serves every folder in it)."""
    dest.mkdir()
    for part in parts:
        for model in part.iterdir():
            if model.is_dir():
                shutil.move(str(model), dest / model.name)
    return dest


@pytest.fixture(scope="module")
def repo(tmp_path_factory, exported_model) -> Path:
    """The tiny model as ``adtr`` and a different model (the brightness fake: other graphs, other
    threshold) as ``other``, on one server."""
    work = tmp_path_factory.mktemp("triton_repo")
    export_triton(exported_model, work / "tiny", TritonOptions(threads=1))
    other = write_fake_export(work / "fake_export")
    export_triton(other, work / "other", TritonOptions(name="other", threads=1))
    return _merge_repo(work / "repo", [work / "tiny", work / "other"])


@pytest.fixture(scope="module")
def server(venv, repo, tmp_path_factory):
    srv = TritonServer(repo, venv, log_dir=tmp_path_factory.mktemp("triton_logs"))
    try:
        srv.start()
    except Unavailable as e:
        pytest.fail(f"the pytriton virtualenv exists but its server does not start: {e}")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    from adtr_edge.data.generate import generate_video

    return generate_video(tmp_path_factory.mktemp("triton_video") / "line.mp4", n_frames=FRAMES, defect_frames=DEFECTS,
                          size=(96, 128), seed=3).path


@pytest.fixture(scope="module")
def reference(exported_model, video) -> dict[int, float]:
    """In-process ONNX Runtime scores of every frame (one thread, as the server's instances run)."""
    sink = Collect()
    s = run_stream(exported_model, video, backend="onnxruntime", backend_options={"intra_op_threads": 1}, extra_sinks=[sink],
                   print_summary=False, handle_signals=False)
    assert s["frames"] == FRAMES
    return sink.scores


def _frame_scores(events: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in events.read_text().splitlines()]
    return {r["frame"]: r["score"] for r in rows if r["event"] == "frame"}


def test_stream_through_triton_scores_equal_onnxruntime(tmp_path, exported_model, server, video, reference, capsys):
    events, summary = tmp_path / "events.jsonl", tmp_path / "summary.json"
    code = main(["stream", str(exported_model), "--source", str(video), "--backend", "triton", "--server", server.grpc_url,
                 "--events", str(events), "--summary", str(summary)])
    assert code == 0, capsys.readouterr().err
    s = json.loads(summary.read_text())
    assert s["backend"] == "triton" and s["frames"] == FRAMES and s["errors"] == []
    assert s["backend_reconnects"] == 0 and s["backend_gap_s"] == 0.0
    got = _frame_scores(events)
    assert sorted(got) == sorted(reference)
    diff = max(abs(got[i] - reference[i]) for i in reference)
    assert diff <= TOL + 1e-6, diff  # + the events file's 6-decimal rounding
    assert "triton" in s["stages_ms"] and s["stages_ms"]["triton"]["count"] == FRAMES


def test_http_protocol_and_batches_through_the_detector_api(exported_model, server, video):
    import cv2

    cap = cv2.VideoCapture(str(video))
    frames = [cap.read()[1] for _ in range(6)]
    cap.release()
    with Detector.load(exported_model, backend="onnxruntime", intra_op_threads=1) as local:
        want = [d.score for d in local(frames)]
        want_maps = [d.anomaly_map for d in local(frames)]
    with Detector.load(exported_model, backend="triton", server=server.http_url, protocol="http") as remote:
        assert remote.backend.protocol == "http"
        got = remote(frames)
        one = remote(frames[0])
    assert np.allclose([d.score for d in got], want, atol=TOL, rtol=0)
    assert max(float(np.abs(d.anomaly_map - m).max()) for d, m in zip(got, want_maps)) <= TOL
    assert abs(one.score - want[0]) <= TOL
    with Detector.load(exported_model, backend="triton", server=server.grpc_url) as remote:
        # The member models are reachable on their own too (calibration and benchmarks use the backbone alone).
        features = remote.backend.run_backbone(np.zeros((2, 64, 64, 3), np.uint8))
    assert features.shape[0] == 2 and features.dtype == np.float32


def test_a_server_with_another_model_is_refused_in_one_line(tmp_path, exported_model, server, video, capsys):
    base = ["stream", str(exported_model), "--source", str(video), "--backend", "triton", "--server", server.grpc_url]
    assert main(base + ["--triton-model", "other"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'other'" in err and "is another model" in err and "sha256" in err, err
    # Same graphs, another threshold (a re-fitted head exported elsewhere): refused as well.
    changed = tmp_path / "changed"
    shutil.copytree(exported_model, changed)
    manifest = json.loads((changed / "manifest.json").read_text())
    manifest["meta"]["postprocess"]["thresholds"]["threshold"] += 0.25
    (changed / "manifest.json").write_text(json.dumps(manifest))
    assert main(["stream", str(changed), *base[2:]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "threshold" in err and "differs" in err, err
    # Nobody listening: one line naming the server.
    nobody = f"127.0.0.1:{free_port()}"
    assert main(["stream", str(exported_model), "--source", str(video), "--backend", "triton", "--server", nobody]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unreachable" in err and nobody in err, err
    assert main(base[:-2]) == 2
    assert "--backend triton needs --server" in capsys.readouterr().err


class KillAndRestart(Sink):
    """At frame ``at`` the server is SIGKILLed; ``after`` seconds later it is started again (in the
    background, like an orchestrator restarting a crashed container)."""

    def __init__(self, server: TritonServer, at: int, after: float):
        self.server, self.at, self.after = server, at, after
        self.restarted = threading.Event()
        self.thread: threading.Thread | None = None

    def on_frame(self, r) -> None:
        if r.frame.index == self.at and self.thread is None:
            self.server.kill()

            def restart():
                self.restarted.wait(self.after)  # plain wait: an Event nobody sets
                self.server.start()

            self.thread = threading.Thread(target=restart, daemon=True)
            self.thread.start()


def test_server_killed_mid_stream_reconnects_and_reports_the_gap(tmp_path, venv, repo, exported_model, video, reference):
    srv = TritonServer(repo, venv, log_dir=tmp_path / "logs").start()
    killer, collect = KillAndRestart(srv, at=6, after=1.0), Collect()
    events = tmp_path / "events.jsonl"
    try:
        s = run_stream(exported_model, video, backend="triton", backend_options={"server": srv.grpc_url, "reconnect_s": 90.0},
                       events=events, extra_sinks=[killer, collect], print_summary=False, handle_signals=False)
        killer.thread.join(timeout=120)
    finally:
        srv.stop()
    assert srv.starts == 2
    assert s["frames"] == FRAMES and s["errors"] == [] and s["stopped_by"] == "end of source"
    assert s["backend_reconnects"] == 1 and s["backend_gap_s"] >= 1.0, s
    # No frame lost or changed: the batch in flight was sent again to the restarted server.
    assert sorted(collect.scores) == sorted(reference)
    assert max(abs(collect.scores[i] - reference[i]) for i in reference) <= TOL
    rows = [json.loads(line) for line in events.read_text().splitlines()]
    gaps = [r for r in rows if r["event"] == "backend_gap"]
    assert len(gaps) == 1 and gaps[0]["name"] == f"grpc://{srv.grpc_url}" and "no inference for" in gaps[0]["reason"]
    # Reported in order: before the first frame that ran after the outage.
    order = [r["event"] if r["event"] != "frame" else r["frame"] for r in rows if r["event"] in ("frame", "backend_gap")]
    assert order.index("backend_gap") == gaps[0]["frame"] and gaps[0]["frame"] > 6


class Kill(Sink):
    """Kills the server at one frame, for good."""

    def __init__(self, server: TritonServer, at: int):
        self.server, self.at = server, at

    def on_frame(self, r) -> None:
        if r.frame.index == self.at:
            self.server.kill()


def test_server_that_never_comes_back_is_an_outage_in_the_summary_and_events(tmp_path, venv, repo, exported_model, video):
    from adtr_edge.runtime.summary import format_summary

    srv = TritonServer(repo, venv, log_dir=tmp_path / "logs").start()
    events = tmp_path / "events.jsonl"
    try:
        s = run_stream(exported_model, video, backend="triton", backend_options={"server": srv.grpc_url, "reconnect_s": 1.5},
                       events=events, extra_sinks=[Kill(srv, at=6)], print_summary=False, handle_signals=False)
    finally:
        srv.stop()
    assert s["stopped_by"] == "error" and "did not come back" in s["errors"][-1] and s["frames"] < FRAMES
    assert s["backend_reconnects"] == 0 and s["backend_gap_s"] >= 1.5, s
    rows = [json.loads(line) for line in events.read_text().splitlines()]
    gaps = [r for r in rows if r["event"] == "backend_gap"]
    assert len(gaps) == 1 and "the server did not come back" in gaps[0]["reason"] and gaps[0]["frame"] > 6
    assert gaps[0]["frame"] == max(r["frame"] for r in rows if r["event"] == "frame") + 1  # the first frame that never ran
    text = format_summary(s)
    assert "0 reconnect(s), " in text and "s without inference" in text
    # The server runs both stages: the summary has its round trip, no made-up zero-time stages.
    assert set(s["stages_ms"]) == {"preprocess", "postprocess", "triton"}, s["stages_ms"]
    assert "backbone" not in text and "transformer" not in text
