import json

from adtr_edge.demo import run_demo


def test_demo_runs_end_to_end(tmp_path):
    """The README's first command, shortened: every stage runs and writes what the README promises."""
    lines = []
    result = run_demo(tmp_path / "demo", epochs=1, frames=20, progress=False, log=lines.append)
    out = result.folder
    for name in ("model/checkpoint.json", "eval/report.json", "onnx/manifest.json", "events.jsonl", "overlay.mp4",
                 "summary.json", "truth.json"):
        assert (out / name).is_file(), name
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    frames = [e for e in events if e.get("event") == "frame"]
    assert len(frames) == 20 and {"time", "score", "normalized_score", "label"} <= set(frames[0])
    assert result.truth["frames"] == 20
    assert result.truth["tp"] + result.truth["fn"] > 0  # the video really has defective frames
    report = json.loads((out / "eval/report.json").read_text())
    low, high = report["intervals"]["image_auroc"]  # the demo states how far its small test set pins the figures
    assert f"image AUROC {report['image_auroc']:.3f} [{low:.3f}-{high:.3f}]" in "\n".join(lines)
