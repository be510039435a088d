"""``--config FILE`` for ``stream`` and ``train`` (adtr_edge.config_file): the examples under
docs/examples resolve to the same settings as their command lines, the command line wins over the
file, bad files are one line and exit 2 before anything starts, and ``--help`` is grouped in panels."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import typer

from adtr_edge.cli import app
from adtr_edge.cli import main as cli_main
from tests.runtime_fakes import write_fake_export, write_video

REPO = Path(__file__).resolve().parents[1]
LINE_EXAMPLE = REPO / "docs/examples/line.yaml"
TRAIN_EXAMPLE = REPO / "docs/examples/train.yaml"
LINE_ARGS = [
    "/opt/adtr/engines/line1", "--backend", "auto",
    "--source", "left=rtsp://10.0.0.5/stream1", "--source", "right=rtsp://10.0.0.6/stream1", "--source", "top=v4l2:///dev/video0",
    "--reconnect-attempts", "0", "--threshold", "0.62", "--min-consecutive", "3",
    "--events", "/var/lib/adtr/line1/events.jsonl", "--save-anomalies", "/var/lib/adtr/line1/anomalies",
    "--mqtt", "mqtt://broker:1883/plant/line1", "--webhook", "https://mes.example/hooks/adtr", "--spool", "/var/lib/adtr/spool",
    "--http", "0.0.0.0:8080", "--metrics", "9100",
]
TRAIN_ARGS = ["data/line1", "--feature-cache", "cache/line1", "--preset", "default", "--epochs", "30", "--seed", "0",
              "--threshold-quantile", "0.995", "--out", "runs/line1"]


def _command(name: str):
    return typer.main.get_command(app).commands[name]


def _settings(name: str, args: list) -> dict:
    """What the command would run with: its parsed parameters (lists and tuples alike), --config aside."""
    with _command(name).make_context(name, list(args)) as ctx:
        params = dict(ctx.params)
    params.pop("config")
    return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in params.items()}


# -- the examples ----------------------------------------------------------------------------------


def test_the_line_example_is_its_command_line():
    from_file = _settings("stream", ["--config", str(LINE_EXAMPLE)])
    assert from_file == _settings("stream", LINE_ARGS)
    # What the example is for: three cameras, MQTT, a webhook and a threshold in one file.
    assert len(from_file["source"]) == 3 and from_file["mqtt"] and from_file["webhook"] and from_file["threshold"] == 0.62
    assert from_file != _settings("stream", [])  # the file sets something


def test_the_training_example_is_its_command_line():
    from_file = _settings("train", ["--config", str(TRAIN_EXAMPLE)])
    assert from_file == _settings("train", TRAIN_ARGS)
    assert Path(from_file["data"]) == Path("data/line1") and from_file["epochs"] == 30  # older typer keeps the text here


@pytest.mark.skipif(importlib.util.find_spec("tomllib") is None and importlib.util.find_spec("tomli") is None,
                    reason="TOML needs Python 3.11+ or tomli")
def test_toml_and_json_read_like_yaml(tmp_path):
    (tmp_path / "line.toml").write_text('source = ["left=a.mp4", "right=b.mp4"]\nmin_consecutive = 3\nthreshold = 0.5\nshow = true\n')
    (tmp_path / "line.json").write_text(json.dumps({"source": ["left=a.mp4", "right=b.mp4"], "min_consecutive": 3, "threshold": 0.5, "show": True}))
    args = ["--source", "left=a.mp4", "--source", "right=b.mp4", "--min-consecutive", "3", "--threshold", "0.5", "--show"]
    expected = _settings("stream", args)
    assert _settings("stream", ["--config", str(tmp_path / "line.toml")]) == expected
    assert _settings("stream", ["--config", str(tmp_path / "line.json")]) == expected


def test_keys_take_dashes_or_underscores_and_numbers_as_text(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("min_consecutive: 2\ncamera: [0, top=1]\nhttp: 8080\n")
    assert _settings("stream", ["--config", str(f)]) == _settings("stream", ["--min-consecutive", "2", "--camera", "0", "--camera", "top=1",
                                                                              "--http", "8080"])


# -- the command line wins -------------------------------------------------------------------------


def test_the_command_line_wins_over_the_file(tmp_path, monkeypatch, capsys):
    model = write_fake_export(tmp_path / "model")
    video = write_video(tmp_path / "v.mp4", [False, True, False, False, True, False])
    config = tmp_path / "line.yaml"
    config.write_text(f"model-dir: {model}\nsource: [{video}]\nmax-frames: 5\nevents: {tmp_path / 'file.jsonl'}\n")

    def frames(path):
        return [e for e in map(json.loads, path.read_text().splitlines()) if e["event"] == "frame"]

    assert cli_main(["stream", "--config", str(config)]) == 0
    assert len(frames(tmp_path / "file.jsonl")) == 5
    assert cli_main(["stream", "--config", str(config), "--max-frames", "2", "--events", str(tmp_path / "cli.jsonl")]) == 0
    assert len(frames(tmp_path / "cli.jsonl")) == 2


def test_a_source_on_the_command_line_replaces_the_files(tmp_path, captured_run):
    config = tmp_path / "line.yaml"
    config.write_text(f"model-dir: {tmp_path}\nsource: [left=a.mp4, right=b.mp4]\nthreshold: 0.5\n")
    assert cli_main(["stream", "--config", str(config), "--camera", "0", "--threshold", "0.7"]) == 0
    (call,) = captured_run
    assert call["source"] == 0 and call["threshold"] == 0.7
    assert cli_main(["stream", "--config", str(config)]) == 0
    assert [(s.name, s.spec) for s in captured_run[1]["source"]] == [("left", "a.mp4"), ("right", "b.mp4")]
    assert captured_run[1]["threshold"] == 0.5


def test_an_anomaly_source_on_the_command_line_replaces_the_files(tmp_path, monkeypatch):
    import adtr_edge.data.datasets as datasets
    import adtr_edge.train.sources as sources

    asked = {}

    class Stop(Exception):
        pass

    def fake_pool(train_set, **kw):
        asked.update(kw)
        raise Stop

    monkeypatch.setattr(datasets, "load_dataset", lambda data, split: [])
    monkeypatch.setattr(sources, "build_anomaly_pool", fake_pool)
    config = tmp_path / "train.yaml"
    config.write_text(f"data: {tmp_path}\nsynthetic: scar\nsynthetic-count: 7\n")
    with pytest.raises(Stop):
        cli_main(["train", "--config", str(config), "--external-anomalies", str(tmp_path)])
    assert asked["synthetic"] is None and asked["external"] == tmp_path and asked["count"] == 7


# -- bad input: one line, exit 2, nothing started --------------------------------------------------


@pytest.mark.parametrize("text, message", [
    ("min-consecutiv: 3\n", "unknown key 'min-consecutiv'; did you mean 'min-consecutive'?"),
    ("epochs: 3\n", "unknown key 'epochs'"),  # a train option, not a stream one
    ("min-consecutive: three\n", "'min-consecutive' (--min-consecutive) must be an integer, got 'three'"),
    ("min-consecutive: 0\n", "'min-consecutive' (--min-consecutive) must be >= 1, got 0"),
    ("threshold: high\n", "'threshold' (--threshold) must be a number, got 'high'"),
    ("show: 'yes'\n", "'show' (--show) must be true or false, got 'yes'"),
    ("events: true\n", "'events' (--events) must be a string, got True"),
    ("threshold: [1, 2]\n", "'threshold' (--threshold) takes one value, got a list"),
    ("threshold:\n", "'threshold' (--threshold) has no value"),
    ("source: [a.mp4\n", "not valid YAML at line 2 column 1"),
    ("- a.mp4\n", "must be a mapping of option names to values, got list"),
    ("min-consecutive: 2\nmin_consecutive: 3\n", "'min_consecutive' sets the same option as 'min-consecutive'"),
])
def test_a_bad_stream_config_is_one_line(tmp_path, captured_run, capsys, text, message):
    config = tmp_path / "line.yaml"
    config.write_text(text)
    assert cli_main(["stream", "--config", str(config), "--camera", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --config {config}: {message}") and "\n" not in err
    assert captured_run == []


def test_a_missing_or_unknown_file_is_one_line(tmp_path, captured_run, capsys):
    for name, message in (("missing.yaml", "file not found"), ("line.ini", "use a .yaml (or .yml, .toml, .json) file")):
        assert cli_main(["stream", "--config", str(tmp_path / name), "--camera", "0"]) == 2
        assert capsys.readouterr().err.strip() == f"error: --config {tmp_path / name}: {message}"
    assert captured_run == []


def test_yaml_without_pyyaml_is_one_line(tmp_path, monkeypatch, captured_run, capsys):
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml now raises ImportError
    config = tmp_path / "line.yaml"
    config.write_text("min-consecutive: 3\n")
    assert cli_main(["stream", "--config", str(config), "--camera", "0"]) == 2
    assert capsys.readouterr().err.strip() == f"error: --config {config}: reading YAML needs PyYAML (pip install 'adtr-edge[yaml]')"
    assert captured_run == []


@pytest.mark.parametrize("text, message", [
    ("epochs: 2.5\n", "'epochs' (--epochs) must be an integer, got 2.5"),
    ("min-consecutive: 3\n", "unknown key 'min-consecutive'"),
    ("data: [a, b]\n", "'data' (DATA) takes one value, got a list"),
])
def test_a_bad_train_config_is_one_line(tmp_path, monkeypatch, capsys, text, message):
    import adtr_edge.data.datasets as datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a: pytest.fail("training started"))
    config = tmp_path / "train.yaml"
    config.write_text(text)
    assert cli_main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --config {config}: {message}") and "\n" not in err


# -- help panels -----------------------------------------------------------------------------------

PANELS = {
    "stream": ("Source", "Model", "Alarms and outputs", "Delivery (MQTT, webhook)", "Web view and metrics", "Performance"),
    "train": ("Data", "Model", "Training", "Score head", "ADTR+ (anomalies)", "Output"),
}


@pytest.mark.parametrize("name", sorted(PANELS))
def test_help_is_grouped_in_panels(name, capsys):
    params = [p for p in _command(name).params if p.name not in ("config", "help")]
    unplaced = [p.name for p in params if getattr(p, "rich_help_panel", None) not in PANELS[name]]
    assert not unplaced, f"{name} options without a help panel: {unplaced}"
    assert cli_main([name, "--help"]) == 0
    shown = capsys.readouterr().out
    for panel in PANELS[name]:
        assert f"─ {panel} ─" in shown
    assert "--config" in shown
