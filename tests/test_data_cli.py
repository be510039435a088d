"""The data area's CLI commands, on a throw-away typer app."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from adtr_edge.data.cli import register


def test_generate_then_check(tmp_path):
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    result = runner.invoke(app, ["generate-data", str(tmp_path), "--category", "cloth", "--n-train", "4",
                                 "--n-test-good", "2", "--n-test-defect", "4", "--height", "48", "--width", "64"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cloth" / "ground_truth" / "spot" / "000_mask.png").is_file()
    result = runner.invoke(app, ["check-data", str(tmp_path / "cloth")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["train"]["n_images"] == 4
    assert report["test"]["counts"] == {"crack": 1, "good": 2, "missing": 1, "scratch": 1, "spot": 1}
