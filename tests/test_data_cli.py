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
    # The normals' exposure spread, as train --normalize-exposure would see it (full-size images).
    from adtr_edge.data.datasets import load_dataset

    train = load_dataset(tmp_path / "cloth", "train")
    means = sorted(float(train.image(i).mean()) for i in range(len(train)))
    spread = report["train"]["normal_mean_grey"]
    assert means[0] <= spread["p5"] <= spread["p50"] <= spread["p95"] <= means[-1]
    assert abs(spread["p50"] - (means[1] + means[2]) / 2) < 0.06
    assert report["test"]["counts"] == {"crack": 1, "good": 2, "missing": 1, "scratch": 1, "spot": 1}
