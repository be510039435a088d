"""``adtr-edge inspect``: describe ONNX graphs and check them against the TensorRT ONNX parsers."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("inspect")
    def inspect_cmd(
        path: Path = typer.Argument(..., help="An .onnx file, or an export folder (every graph in its manifest.json)."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON to this file."),
    ):
        """Show opset, metadata, tensors, operators, weights, Q/DQ and TensorRT parser support of ONNX graphs."""
        from ..fileio import write_json_atomic
        from .inspect import format_report, inspect_path

        reports = inspect_path(path)
        typer.echo("\n\n".join(format_report(r) for r in reports))
        if json_out is not None:
            # One file keeps one shape: a list, also for a single graph.
            write_json_atomic(json_out, reports)
            typer.echo(f"\nJSON report: {json_out}")
