"""Switching models in a running stream (``Pipeline.swap_model``, ``POST /api/model``): the new
model is loaded beside the running one and takes over between two steps; every frame is scored
once, alarms are neither lost nor doubled, every event after the swap carries the new model's
digest, a threshold set by hand stays; a broken folder is refused in one line and the old model
keeps running."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from tests.runtime_fakes import write_fake_export, write_video

from adtr_edge.errors import AdtrError
from adtr_edge.postprocessing import Thresholds
from adtr_edge.runtime.pipeline import run_stream
from adtr_edge.runtime.review import model_digest
from adtr_edge.runtime.sinks import Sink

PATTERN = [i % 10 in (3, 4, 5, 6) for i in range(80)]  # 8 alarms of 4 frames
FRAMES = len(PATTERN)


class SwapAt(Sink):
    """At frame ``at`` of the first source, asks for a swap to ``path`` from a thread of its own
    (as the web view's server does) and holds the sink thread until the new model is loaded and
    waiting, so the swap lands mid-stream however fast the file runs."""

    def __init__(self, path, at: int = 30):
        self.path, self.at = path, at
        self.result: dict = {}
        self.thread = None

    def attach(self, pipeline):
        self.pipeline = pipeline

    def on_frame(self, r):
        if self.thread is None and r.frame.index == self.at:
            def swap():
                try:
                    self.result["record"] = self.pipeline.swap_model(self.path)
                except AdtrError as e:
                    self.result["error"] = str(e)

            self.thread = threading.Thread(target=swap, daemon=True)
            self.thread.start()
            deadline = time.monotonic() + 30
            while self.pipeline._swap is None and self.thread.is_alive() and time.monotonic() < deadline:
                time.sleep(0.005)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("swap_models")
    a = write_fake_export(root / "a")
    # Same scores (the Q/DQ pair is exact on 0..255), other graphs (another digest), another threshold.
    b = write_fake_export(root / "b", qdq=True, thresholds=Thresholds(0.45, 0.0, 1.0))
    return a, b


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("swap_videos")
    return [str(write_video(root / f"{n}.mp4", PATTERN)) for n in ("left", "right")]


def _events(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _alarms(rows) -> dict:
    """Each source's alarm events in order (how two sources interleave depends on timing)."""
    out: dict = {}
    for e in rows:
        if e["event"].startswith("alarm"):
            out.setdefault(e["source"], []).append((e["event"], e["frame"], e.get("start_frame")))
    return out


@pytest.mark.parametrize("threshold", [None, 0.4])
def test_swap_mid_stream_scores_every_frame_once_and_keeps_the_alarms(models, videos, tmp_path, threshold):
    a, b = models
    sources = [("left", videos[0]), ("right", videos[1])]
    ref = run_stream(a, sources, backend="onnxruntime", events=tmp_path / "ref.jsonl", threshold=threshold,
                     print_summary=False, handle_signals=False)
    swapper = SwapAt(b)
    s = run_stream(a, sources, backend="onnxruntime", events=tmp_path / "swap.jsonl", threshold=threshold,
                   extra_sinks=[swapper], print_summary=False, handle_signals=False)
    swapper.thread.join(10)
    assert "error" not in swapper.result, swapper.result
    record = swapper.result["record"]
    old, new = model_digest(a)["digest"], model_digest(b)["digest"]
    assert old != new and record["from"]["digest"] == old and record["to"] == model_digest(b)
    assert s["model"] == model_digest(b) and len(s["swaps"]) == 1 and s["frames"] == ref["frames"] == 2 * FRAMES
    # The threshold: one set by hand stays; otherwise the new folder's.
    assert s["threshold"] == record["threshold"] == (threshold if threshold is not None else 0.45)

    rows = _events(tmp_path / "swap.jsonl")
    for name in ("left", "right"):
        mine = [e for e in rows if e["source"] == name]
        frames = [e for e in mine if e["event"] == "frame"]
        assert [e["frame"] for e in frames] == list(range(FRAMES))  # none dropped, none twice
        first = record["at_frames"][name]
        assert 20 < first < FRAMES  # mid-stream (the other source may lag the one that asked)
        assert [e["model"] for e in frames] == [old] * first + [new] * (FRAMES - first)
        swap = [i for i, e in enumerate(mine) if e["event"] == "model_swap"]
        assert len(swap) == 1 and mine[swap[0] + 1] == next(e for e in frames if e["frame"] == first)  # right before it
        assert mine[swap[0]]["from"] == old and mine[swap[0]]["to"] == new and mine[swap[0]]["frame"] == first
        # Every alarm event names the model that was running when it happened.
        for e in mine:
            if e["event"].startswith("alarm"):
                assert e["model"] == (old if e["frame"] < first else new)
    # The same alarms as a run without a swap: none lost, none doubled, none split at the swap.
    assert _alarms(rows) == _alarms(_events(tmp_path / "ref.jsonl")) and s["alarms"] == ref["alarms"] == 16


def test_a_broken_folder_is_refused_and_the_old_model_goes_on(models, videos, tmp_path):
    a, b = models
    broken = shutil.copytree(b, tmp_path / "broken")
    data = (broken / "transformer.onnx").read_bytes()
    (broken / "transformer.onnx").write_bytes(data[: len(data) // 2])  # a copy cut short
    for target, message in ((broken, "transformer.onnx"), (tmp_path / "nowhere", "nowhere")):
        swapper = SwapAt(target, at=10)
        s = run_stream(a, videos[0], backend="onnxruntime", events=tmp_path / "e.jsonl", extra_sinks=[swapper],
                       print_summary=False, handle_signals=False)
        swapper.thread.join(10)
        err = swapper.result["error"]
        assert err.startswith(f"model {target} refused, the running model stays: ") and message in err
        assert "\n" not in err
        assert s["swaps"] == [] and s["model"] == model_digest(a) and s["errors"] == [] and s["frames"] == FRAMES
        rows = _events(tmp_path / "e.jsonl")
        assert {e["model"] for e in rows if e["event"] == "frame"} == {model_digest(a)["digest"]}
        assert not [e for e in rows if e["event"] == "model_swap"]


def test_a_folder_whose_input_does_not_match_is_refused_and_the_old_model_goes_on(models, videos, tmp_path):
    """A folder whose metadata declares another image size (32 px) than its graphs take (64 px) is
    refused at load, in one line, and the stream runs to its end on the model it had."""
    from tests.runtime_fakes import fake_meta

    a, _ = models
    meta = fake_meta().raw
    other = {"model": {**meta["model"], "input_size": [32, 32]}, "preprocess": {**meta["preprocess"], "height": 32, "width": 32}}
    target = write_fake_export(tmp_path / "other-size", graph_meta_override={"backbone": other, "transformer": other})
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["meta"].update(other)
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2))

    swapper = SwapAt(target, at=10)
    s = run_stream(a, videos[0], backend="onnxruntime", events=tmp_path / "e.jsonl", extra_sinks=[swapper],
                   print_summary=False, handle_signals=False)
    swapper.thread.join(10)
    err = swapper.result["error"]
    assert err.startswith(f"model {target} refused, the running model stays: ") and "\n" not in err
    assert "metadata says (batch, 32, 32, 3)" in err
    assert s["swaps"] == [] and s["model"] == model_digest(a) and s["errors"] == [] and s["frames"] == FRAMES
    rows = _events(tmp_path / "e.jsonl")
    assert {e["model"] for e in rows if e["event"] == "frame"} == {model_digest(a)["digest"]}
    assert [e["frame"] for e in rows if e["event"] == "frame"] == list(range(FRAMES))
    assert not [e for e in rows if e["event"] == "model_swap"]


def test_swap_needs_a_running_stream_and_a_model_folder(models, tmp_path):
    from adtr_edge.runtime.detector import Detector
    from adtr_edge.runtime.pipeline import Pipeline
    from adtr_edge.runtime.sources import open_source

    a, b = models
    video = write_video(tmp_path / "v.mp4", [False] * 3)
    with Detector.load(a, backend="onnxruntime") as det:
        bare = Pipeline(det, open_source(str(video)), [])
        with pytest.raises(AdtrError, match="cannot load another model"):
            bare.swap_model(b)
        ready = Pipeline(det, open_source(str(video)), [], load_model=lambda p: Detector.load(p, backend="onnxruntime"))
        with pytest.raises(AdtrError, match="the stream is not running"):
            ready.swap_model(b)


def test_web_view_swaps_the_model_with_the_token(models, tmp_path):
    pytest.importorskip("starlette", reason="the factory extra is not installed")
    from tests.web_helpers import http, live_stream, wait_for

    from adtr_edge.runtime.summary import format_summary
    from adtr_edge.runtime.web.frontend import Frontend

    a, b = models
    bearer = {"Authorization": "Bearer tok"}
    fe = Frontend(a, http="127.0.0.1:0", token="tok", announce=False)
    base = fe.http.url
    with live_stream(a, fe, period=0.02) as out:
        assert http("POST", base + "api/model", {"path": str(b)})[0] == 401
        code, _, body = http("POST", base + "api/model", {"path": str(tmp_path / "missing")}, headers=bearer)
        assert code == 400 and json.loads(body)["error"].startswith(f"model {tmp_path / 'missing'} refused, the running model stays: ")
        code, _, body = http("POST", base + "api/model", {"path": str(b)}, headers=bearer, timeout=60)
        assert code == 200, body
        reply = json.loads(body)
        assert reply["swap"]["to"] == model_digest(b) and reply["status"]["model"]["name"] == "b"
        assert reply["status"]["model"]["digest"] == model_digest(b)["digest"] and reply["status"]["threshold"] == 0.45
        at = reply["swap"]["frames_before"]
        wait_for(lambda: fe.pipeline.processed > at + 5, 10, "frames after the swap")
    fe.close()
    s = out["summary"]
    assert s["model"] == model_digest(b) and len(s["swaps"]) == 1 and s["errors"] == []
    assert f"model swap  {model_digest(a)['digest']} -> {model_digest(b)['digest']} ({b})" in format_summary(s)


def test_follow_model_switches_when_the_stable_path_is_repointed(models, tmp_path, caplog):
    """A promotion repoints a symlink: the stream follows it; a broken folder behind the link is
    refused once (one line in the log) and the stream stays on the last good model."""
    import logging
    import os

    from tests.runtime_fakes import FakeCapture

    from adtr_edge.runtime.model_watch import ModelWatcher

    a, b = models
    broken = shutil.copytree(b, tmp_path / "broken")
    (broken / "backbone.onnx").write_bytes(b"not onnx")
    link = tmp_path / "current"
    os.symlink(a, link)

    def repoint(target):
        tmp = tmp_path / "current.new"
        os.symlink(target, tmp)
        os.replace(tmp, link)  # atomic, as a promotion does it

    watcher = ModelWatcher(link, interval=0.05)
    out = {}

    def run():
        out["summary"] = run_stream(link, "rtsp://cam/1", backend="onnxruntime", opener=lambda t, api: FakeCapture(None, period=0.02),
                                    events=tmp_path / "e.jsonl", extra_sinks=[watcher], print_summary=False, handle_signals=False)

    from tests.web_helpers import wait_for  # noqa: PLC0415 (needs the factory extra only for its import guard)

    t = threading.Thread(target=run, daemon=True)
    with caplog.at_level(logging.ERROR, logger="adtr_edge.runtime.model_watch"):
        t.start()
        wait_for(lambda: getattr(watcher, "_pipeline", None) is not None and watcher._pipeline.processed > 5, 20, "frames")
        repoint(b)
        wait_for(lambda: watcher.swapped == 1, 20, "the swap to b")
        repoint(broken)
        wait_for(lambda: watcher.refused == 1, 20, "the refusal of the broken folder")
        n = watcher._pipeline.processed
        wait_for(lambda: watcher._pipeline.processed > n + 5, 20, "frames after the refusal")
        watcher._pipeline.stop("test done")
        t.join(20)
    s = out["summary"]
    assert s["model"] == model_digest(b) and len(s["swaps"]) == 1
    assert s["follow_model"] == {"path": str(link), "swapped": 1, "refused": 1}
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and "\n" not in refusals[0] and str(broken) in refusals[0]
    digests = [e["model"] for e in _events(tmp_path / "e.jsonl") if e["event"] == "frame"]
    assert digests[0] == model_digest(a)["digest"] and digests[-1] == model_digest(b)["digest"]


def test_cli_swap_talks_to_the_running_stream(models, tmp_path, capsys):
    pytest.importorskip("starlette", reason="the factory extra is not installed")
    from tests.web_helpers import live_stream

    from adtr_edge.cli import main as cli_main
    from adtr_edge.runtime.web.frontend import Frontend

    a, b = models
    fe = Frontend(a, http="127.0.0.1:0", token="tok", announce=False)
    url = fe.http.url
    with live_stream(a, fe, period=0.02):
        assert cli_main(["swap", url, str(b), "--token", "tok"]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"swapped {model_digest(a)['digest']} -> {model_digest(b)['digest']} ({b}) after ")
        assert cli_main(["swap", url, str(tmp_path / "none"), "--token", "tok"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {url}: model {tmp_path / 'none'} refused, the running model stays: ") and "\n" not in err
        assert cli_main(["swap", url, str(b)]) == 2
        assert capsys.readouterr().err.strip().startswith(f"error: {url}: token required")
    fe.close()
    assert cli_main(["swap", url, str(b), "--token", "tok", "--timeout", "5"]) == 2
    assert "cannot reach the stream's web view" in capsys.readouterr().err
