"""The camera watch: exposure and focus of each source's recent frames against the training normals'."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from adtr_edge.frame_quality import QUALITY_KEY, WINDOW, QualityWatch, measure, normal_ranges

SIZE = (64, 64)


def _normals(n=40, seed=0):
    """Textured normal frames: noise around a mid grey, slightly varying exposure."""
    rng = np.random.default_rng(seed)
    return [np.clip(rng.normal(120 + 10 * rng.uniform(-1, 1), 30, (96, 96, 3)), 0, 255).astype(np.uint8) for _ in range(n)]


def test_measures_see_exposure_and_focus_at_the_model_size():
    img = _normals(1)[0]
    m = measure(img, SIZE)
    assert measure((img * 0.5).astype(np.uint8), SIZE)["grey"] == pytest.approx(m["grey"] * 0.5, rel=0.02)
    assert measure(cv2.GaussianBlur(img, (0, 0), 2.0), SIZE)["sharpness"] < 0.2 * m["sharpness"]
    big = cv2.resize(img, (192, 192), interpolation=cv2.INTER_NEAREST)  # another camera resolution, the same scene
    assert measure(big, SIZE)["grey"] == pytest.approx(m["grey"], rel=0.02)
    assert measure(img[..., 0], SIZE)["grey"] == pytest.approx(measure(cv2.cvtColor(img[..., 0], cv2.COLOR_GRAY2BGR), SIZE)["grey"])


def test_the_normals_range_covers_them_with_a_margin():
    normals = _normals()
    ranges = normal_ranges(normals, SIZE)
    greys = [measure(im, SIZE)["grey"] for im in normals]
    assert ranges["grey"][0] < min(greys) and ranges["grey"][1] > max(greys)
    assert ranges["size"] == list(SIZE) and ranges["images"] == len(normals) and ranges["window"] == WINDOW
    assert normal_ranges(normals[:1], SIZE) is None


def test_a_blurred_camera_is_reported_once_and_its_return_once():
    normals = _normals()
    watch = QualityWatch(normal_ranges(normals, SIZE))
    assert all(watch.update(im) == [] for im in _normals(WINDOW + 5, seed=1))  # new normal frames: nothing
    blurred = [cv2.GaussianBlur(im, (0, 0), 2.0) for im in _normals(WINDOW * 2, seed=2)]
    changes = [(i, c) for i, im in enumerate(blurred) for c in watch.update(im)]
    assert len(changes) == 1  # one event, not one per frame
    i, (kind, key, reason) = changes[0]
    assert kind == "camera_drift" and key == "sharpness" and "blurrier than the training normals" in reason
    assert i == WINDOW // 2  # the median of the last WINDOW frames crossed when most of them were blurred
    back = [(i, c) for i, im in enumerate(_normals(WINDOW * 2, seed=3)) for c in watch.update(im)]
    assert [(c[0], c[1]) for _, c in back] == [("camera_ok", "sharpness")]


def test_a_darker_scene_is_reported_as_exposure():
    watch = QualityWatch(normal_ranges(_normals(), SIZE))
    changes = [c for im in _normals(WINDOW, seed=4) for c in watch.update((im * 0.4).astype(np.uint8))]
    assert [(c[0], c[1]) for c in changes] == [("camera_drift", "grey")] and "darker" in changes[0][2]


def test_training_records_the_ranges_and_the_export_carries_them(trained_checkpoint, exported_model):
    from adtr_edge.train.checkpoint import read_checkpoint_meta

    ranges = read_checkpoint_meta(trained_checkpoint).extra[QUALITY_KEY]
    assert ranges["images"] >= 2 and ranges["grey"][0] < ranges["grey"][1] and ranges["sharpness"][0] < ranges["sharpness"][1]
    assert json.loads((exported_model / "manifest.json").read_text())["meta"][QUALITY_KEY] == ranges


def test_a_stream_whose_camera_loses_focus_says_so_in_its_events(exported_model, sample_dataset, tmp_path):
    from adtr_edge.preprocessing import list_images, read_image
    from adtr_edge.runtime.pipeline import run_stream

    good = list_images(sample_dataset / "train" / "good")
    frames = tmp_path / "frames"
    frames.mkdir()
    order = [(p, False) for p in good[:WINDOW]] + [(p, True) for p in good[:WINDOW * 2]]
    for i, (path, blur) in enumerate(order):
        img = read_image(path)
        cv2.imwrite(str(frames / f"{i:04d}.png"), cv2.GaussianBlur(img, (0, 0), 3.0) if blur else img)
    events = tmp_path / "events.jsonl"
    from adtr_edge.runtime.web.frontend import Frontend
    from adtr_edge.runtime.web.server import HttpServer
    from adtr_edge.runtime.web.app import make_app
    from prometheus_client.parser import text_string_to_metric_families
    from tests.web_helpers import http

    fe = Frontend(exported_model, announce=False)  # the metrics, scraped after the run as Prometheus would
    server = HttpServer(make_app(fe, page=False), "127.0.0.1:0", "--metrics")
    try:
        summary = run_stream(exported_model, str(frames), events=events, print_summary=False, extra_sinks=[fe],
                             handle_signals=False)
        _, _, body = http("GET", server.url + "metrics")
    finally:
        server.close()
    gauges = {tuple(sorted(s.labels.items())): s.value for f in text_string_to_metric_families(body.decode())
              for s in f.samples if s.name == "adtr_camera_drift"}
    src = summary["source"]
    assert gauges == {(("measure", "grey"), ("source", src)): 0.0, (("measure", "sharpness"), ("source", src)): 1.0}
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    camera = [e for e in lines if e["event"].startswith("camera_")]
    assert [(e["event"], e["name"]) for e in camera] == [("camera_drift", "sharpness")]
    assert WINDOW < camera[0]["frame"] < 2 * WINDOW and "blurrier" in camera[0]["reason"]
    frame_order = [e["frame"] for e in lines if e["event"] == "frame"]
    at = lines.index(camera[0])
    assert lines[at - 1]["event"] == "frame" and lines[at - 1]["frame"] == camera[0]["frame"]  # right after its frame
    assert summary["frames"] == len(order) == len(frame_order)
    from adtr_edge.runtime.summary import format_summary

    assert summary["sources"][src]["camera"] == [{"event": "camera_drift", "measure": "sharpness", "frame": camera[0]["frame"]}]
    assert f"camera      {src}: focus changed at frame {camera[0]['frame']}" in format_summary(summary)
