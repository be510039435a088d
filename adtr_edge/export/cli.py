"""CLI commands of the export area: ``export`` (two ONNX graphs), ``export-triton`` (a Triton model
repository) and ``inspect`` (ONNX graphs described and checked against the TensorRT ONNX parsers)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def export(
        checkpoint: Path = typer.Argument(..., help="Checkpoint folder written by 'adtr-edge train'."),
        out: Path = typer.Option(..., "--out", "-o", help="Folder for backbone.onnx, transformer.onnx and manifest.json."),
        opset: Optional[int] = typer.Option(None, help="ONNX opset: 17 (TensorRT 8.6+, LayerNormalization) or 16 (TensorRT 8.5 / JetPack 5). Default: from --trt-version, else 17."),
        trt_version: Optional[str] = typer.Option(None, "--trt-version", help="TensorRT that will build the engines, X.Y (e.g. 8.5): picks opset 16 below 8.6, else 17."),
        force: bool = typer.Option(False, help="Overwrite graphs already in --out."),
        simplify: bool = typer.Option(True, help="Simplify with onnxsim."),
    ):
        """Export a checkpoint as two self-describing ONNX graphs (backbone, transformer)."""
        from .opset import choose_opset

        chosen = choose_opset(opset, trt_version)  # before importing torch: a conflict fails fast
        from .onnx_export import export_checkpoint

        result = export_checkpoint(checkpoint, out, opset=chosen, force=force, do_simplify=simplify)
        typer.echo(f"opset {chosen}" + (f" (for TensorRT {trt_version})" if trt_version and opset is None else ""))
        for name, g in result.manifest["graphs"].items():
            typer.echo(f"{name:<12} {out / g['file']}  {g['bytes'] / 1e6:.1f} MB  sha256 {g['sha256'][:12]}")
        typer.echo(f"manifest: {out / 'manifest.json'}")

    @app.command("export-triton")
    def export_triton_cmd(
        model_dir: Path = typer.Argument(..., help="ONNX export folder (python, onnxruntime_onnx) or TensorRT engine folder (tensorrt_plan)."),
        out: Path = typer.Option(..., "--out", "-o", help="Triton model repository to write (built next to it, then renamed into place)."),
        flavour: str = typer.Option("python", "--flavour", help="python (ONNX Runtime inside Triton's python backend) | onnxruntime_onnx | tensorrt_plan."),
        name: str = typer.Option("adtr", "--name", help="Ensemble name; the members are NAME_backbone and NAME_transformer."),
        max_batch: Optional[int] = typer.Option(None, "--max-batch", help="max_batch_size for dynamic batching (default 8; engines: their profile's max)."),
        instances: int = typer.Option(1, "--instances", help="Model instances per member (instance_group count)."),
        kind: str = typer.Option("auto", "--kind", help="Instance kind: auto (CPU for python, GPU otherwise) | cpu | gpu."),
        queue_delay_us: int = typer.Option(2000, "--queue-delay-us", help="Dynamic batching: longest wait to fill a batch (microseconds)."),
        threads: int = typer.Option(0, "--threads", help="python flavour: ONNX Runtime threads per instance (0 = its default)."),
        force: bool = typer.Option(False, "--force", help="Replace an existing repository at --out."),
    ):
        """Write a Triton model repository: backbone + transformer models and an ensemble chaining them."""
        from .triton_repo import TritonOptions, export_triton

        opts = TritonOptions(flavour=flavour, name=name, max_batch=max_batch, instances=instances, kind=kind,
                             queue_delay_us=queue_delay_us, threads=threads)
        summary = export_triton(model_dir, out, opts, force=force)
        models = summary["models"]
        typer.echo(f"{summary['flavour']} repository {out}: ensemble {summary['ensemble']!r} = {models['backbone']} -> {models['transformer']}, "
                   f"max batch {summary['max_batch_size']}, threshold {summary['threshold']:.6g}")
        typer.echo(f"serve: tritonserver --model-repository={out.resolve()}")

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
