"""CLI commands of the engine area: ``build-engine`` and ``quantize`` (registered by adtr_edge.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("build-engine")
    def build_engine(
        onnx_dir: Path = typer.Argument(..., help="export folder (adtr-edge export) or Q/DQ folder (adtr-edge quantize)"),
        name: Optional[str] = typer.Option(None, "--name", help="engine folder name (default: the export folder's name)"),
        out: Path = typer.Option(Path("engines"), "--out", help="parent folder of engine folders"),
        precision: str = typer.Option("fp16", "--precision", help="fp32 | fp16 | int8 | best (int8/best: INT8 backbone + FP16 transformer)"),
        backbone_precision: Optional[str] = typer.Option(None, "--backbone-precision", help="override: fp32 | fp16 | int8"),
        transformer_precision: Optional[str] = typer.Option(None, "--transformer-precision", help="override: fp32 | fp16 | int8"),
        calib_images: Optional[Path] = typer.Option(None, "--calib-images", help="folder of normal images for INT8 calibration"),
        calib_batches: int = typer.Option(16, "--calib-batches", help="number of calibration batches (of --opt-batch images)"),
        calib_dir: Optional[Path] = typer.Option(None, "--calib-dir", help="calibration cache folder (default calibration/<name>)"),
        workspace: int = typer.Option(1024, "--workspace", help="builder workspace limit, MiB"),
        min_batch: int = typer.Option(1, "--min-batch"),
        opt_batch: int = typer.Option(1, "--opt-batch"),
        max_batch: int = typer.Option(4, "--max-batch"),
        dla_core: Optional[int] = typer.Option(None, "--dla-core", help="run the backbone on this DLA core (Jetson), GPU fallback on; needs --min-batch = --opt-batch = --max-batch"),
        timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="timing cache file (read, then saved back)"),
        build_log: Optional[Path] = typer.Option(None, "--build-log", help="write TensorRT's verbose build log here"),
        force: bool = typer.Option(False, "--force", help="rebuild even if an engine with the same key exists"),
        recalibrate: bool = typer.Option(False, "--recalibrate", help="replace a stale or existing calibration cache"),
        keep_float: str = typer.Option("auto", "--keep-float", help="implicit INT8: backbone layers kept FP16 (auto | none | node-name prefixes, as for quantize)"),
    ):
        """Build TensorRT engines for the two graphs of an export into OUT/NAME/."""
        from .builder import BuildOptions, build_engines
        from .manifest import Profile

        opts = BuildOptions(
            precision=precision, backbone_precision=backbone_precision, transformer_precision=transformer_precision,
            calib_images=calib_images, calib_batches=calib_batches, calib_dir=calib_dir, recalibrate=recalibrate,
            workspace_mb=workspace, profile=Profile(min_batch, opt_batch, max_batch), dla_core=dla_core,
            timing_cache=timing_cache, build_log=build_log, force=force, keep_float=keep_float,
        )
        report = build_engines(onnx_dir, out, name, opts, log=typer.echo)
        typer.echo(f"engines: {report.folder} (built {', '.join(report.built) or 'none'}; up to date {', '.join(report.skipped) or 'none'})")

    @app.command("quantize")
    def quantize(
        onnx_dir: Path = typer.Argument(..., help="export folder (adtr-edge export)"),
        calib_images: Path = typer.Option(..., "--calib-images", help="folder of normal images"),
        out: Path = typer.Option(..., "--out", help="output folder for the Q/DQ graphs"),
        target: str = _target_option("tensorrt (symmetric Q/DQ for build-engine) | cpu (fastest INT8 for ONNX Runtime on x86)"),
        graphs: Optional[str] = _graphs_option(),
        keep_float: str = _keep_float_option(),
        calib_count: int = _calib_count_option(),
        batch_size: int = typer.Option(8, "--batch-size"),
        no_fuse_attention: bool = _no_fuse_attention_option(),
    ):
        """Write INT8 copies of the graphs (ONNX Runtime's quantiser), in the form --target runs fastest."""
        from ..int8.quantize import parse_graphs, parse_target, quantize_export, warn_unmatched

        target = parse_target(target)
        folder = quantize_export(onnx_dir, calib_images, out, parse_graphs(graphs, target), calib_count, batch_size,
                                 log=typer.echo, target=target, keep_float=keep_float, fuse_attention=not no_fuse_attention)
        warn_unmatched(folder, log=typer.echo)
        typer.echo(_next_step("INT8 graphs", folder, target))

    @app.command("quantize-matched")
    def quantize_matched_cmd(
        checkpoint: Path = typer.Argument(..., help="checkpoint folder (adtr-edge train) with a mahalanobis head"),
        data: Path = typer.Option(..., "--data", help="the training dataset: its normals refit the head on the INT8 backbone"),
        calib_images: Path = typer.Option(..., "--calib-images", help="folder of normal images for INT8 calibration"),
        out: Path = typer.Option(..., "--out", help="new folder for the matched pair (Q/DQ backbone, FP32 transformer)"),
        target: str = _target_option("tensorrt | cpu (as for quantize; cpu also quantises the transformer dynamically)"),
        graphs: Optional[str] = _graphs_option(),
        keep_float: str = _keep_float_option(),
        calib_count: int = _calib_count_option(),
        batch_size: int = typer.Option(8, "--batch-size"),
        no_fuse_attention: bool = _no_fuse_attention_option(),
    ):
        """INT8 backbone with the score head refitted on its features (keeps INT8 within ~1 AUROC point)."""
        from ..int8.matched import quantize_matched
        from ..int8.quantize import parse_graphs, parse_target

        target = parse_target(target)
        folder = quantize_matched(checkpoint, data, calib_images, out, calib_count=calib_count, batch_size=batch_size,
                                  log=typer.echo, target=target, keep_float=keep_float, graphs=parse_graphs(graphs, target),
                                  fuse_attention=not no_fuse_attention)
        typer.echo(_next_step("matched INT8 pair", folder, target))


# Options and the closing line that quantize and quantize-matched share.
def _target_option(help: str):
    return typer.Option("tensorrt", "--target", help=help)


def _graphs_option():
    return typer.Option(None, "--graphs", help="backbone | backbone,transformer (default: backbone for tensorrt, both for cpu)")


def _keep_float_option():
    return typer.Option("auto", "--keep-float", help="backbone layers kept out of INT8: auto (the stem and the blocks before the first "
                        "feature stage; that stage too for --target tensorrt) | none | node-name prefixes")


def _no_fuse_attention_option():
    return typer.Option(False, "--no-fuse-attention",
                        help="cpu target: keep attention as exported, not ONNX Runtime's fused MultiHeadAttention (for a build without contrib operators)")


def _calib_count_option():
    return typer.Option(64, "--calib-count", help="number of calibration images")


def _next_step(what: str, folder: Path, target: str) -> str:
    step = (f"build with: adtr-edge build-engine {folder} --precision int8" if target == "tensorrt"
            else f"run with: adtr-edge stream {folder} --backend onnxruntime ...")
    return f"{what}: {folder} ({step})"
