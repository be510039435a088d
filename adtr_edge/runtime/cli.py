"""The ``stream`` command: parse options, call ``run_stream``, print the summary.

``register(app)`` adds it to the main typer app; ``python -m adtr_edge.runtime.cli stream ...``
runs it alone (useful on a device where only the runtime is installed).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..commands import run_app
from ..errors import AdtrError
from ..cuda.base import CUDA_BINDINGS
from .loading import default_model_dir, read_model_folder


def tensorrt_options(model_dir: Path, backend: str, cuda_graphs: bool, cuda_binding: str) -> dict:
    """Backend options from --cuda-graphs / --cuda-binding; refused where they cannot apply."""
    if cuda_binding not in CUDA_BINDINGS:
        raise AdtrError(f"--cuda-binding {cuda_binding!r}: choose one of {', '.join(CUDA_BINDINGS)}")
    asked = [flag for flag, on in (("--cuda-graphs", cuda_graphs), ("--cuda-binding", cuda_binding != "auto")) if on]
    if not asked:
        return {}
    what = " and ".join(asked) + (" apply" if len(asked) > 1 else " applies")
    if backend == "onnxruntime":
        raise AdtrError(f"{what} to the TensorRT backend only, not --backend onnxruntime")
    folder = read_model_folder(model_dir)
    if folder.kind != "tensorrt":
        raise AdtrError(f"{what} to the TensorRT backend only; {folder.path} is an ONNX export "
                        "(build engines from it with 'adtr-edge build-engine')")
    options: dict = {"cuda_binding": cuda_binding}
    if cuda_graphs:
        options["cuda_graphs"] = True
    return options


def register(app: typer.Typer) -> None:
    @app.command("stream")
    def stream(
        model_dir: Optional[Path] = typer.Argument(
            None, show_default=False,
            help="ONNX export folder or TensorRT engine folder (with manifest.json). "
                 "Default: the only folder under ./engines/, else ./adtr-demo/onnx.",
        ),
        camera: Optional[int] = typer.Option(None, "--camera", help="Camera index, e.g. 0."),
        source: Optional[str] = typer.Option(
            None, "--source",
            help="Video file, folder or glob of images, rtsp://..., csi://N, v4l2:///dev/videoN, file://..., or a GStreamer pipeline.",
        ),
        backend: str = typer.Option("auto", "--backend", help="auto | onnxruntime | tensorrt."),
        events: Optional[str] = typer.Option(None, "--events", help="JSON Lines events to FILE, or '-' for stdout."),
        save_anomalies: Optional[Path] = typer.Option(None, "--save-anomalies", help="Folder for anomalous frames + overlays (PNG)."),
        record: Optional[Path] = typer.Option(None, "--record", help="Record the overlay video to FILE (.mp4/.avi)."),
        show: bool = typer.Option(False, "--show", help="Window: original | heat map | overlay ('q' quits)."),
        min_consecutive: int = typer.Option(1, "--min-consecutive", min=1, help="Alarm after N anomalous frames in a row."),
        threshold: Optional[float] = typer.Option(None, "--threshold", help="Raw-score threshold (default: the exported one)."),
        max_frames: Optional[int] = typer.Option(None, "--max-frames", min=1, help="Stop after N frames."),
        batch: int = typer.Option(1, "--batch", min=1, help="Micro-batch size for files and folders (live sources use 1)."),
        summary: Optional[Path] = typer.Option(None, "--summary", help="Write the summary JSON to FILE."),
        threads: Optional[int] = typer.Option(None, "--threads", min=1, help="ONNX Runtime intra-op threads."),
        reconnect_attempts: int = typer.Option(10, "--reconnect-attempts", min=0, help="Reconnect tries for a lost live source (0 = forever)."),
        cuda_graphs: bool = typer.Option(False, "--cuda-graphs", help="TensorRT backend: replay enqueues as CUDA graphs (TensorRT 10+, cuda-python)."),
        cuda_binding: str = typer.Option("auto", "--cuda-binding", help="TensorRT backend: auto | cuda-python | pycuda."),
        mqtt: Optional[str] = typer.Option(
            None, "--mqtt", help="Alarms to MQTT, QoS 1: mqtt://host:port/prefix (also user:pw@host, ?alarms=T&frames=T&status=T topics); spooled on disk first."),
        mqtt_frames: bool = typer.Option(False, "--mqtt-frames", help="Also publish every frame's score to the frames topic."),
        webhook: Optional[str] = typer.Option(None, "--webhook", help="Alarms as JSON POSTs to URL, retried with back-off (spooled on disk first)."),
        spool: Optional[Path] = typer.Option(None, "--spool", help="Folder of the delivery spool (default: ~/.local/state/adtr-edge/spool)."),
        spool_max_mb: float = typer.Option(64.0, "--spool-max-mb", help="Most MB of undelivered events kept per destination; beyond, new ones are dropped and counted."),
    ) -> None:
        """Stream a camera, stream, video or image folder through the model; events, alarms, summary."""
        from .pipeline import run_stream
        from .sources import ReconnectPolicy

        if (camera is None) == (source is None):
            raise AdtrError("give exactly one of --camera N or --source S")
        if model_dir is None:
            model_dir = default_model_dir()
            typer.echo(f"model: {model_dir}", err=True)
        options = {"intra_op_threads": threads} if threads is not None else {}
        options.update(tensorrt_options(model_dir, backend, cuda_graphs, cuda_binding))
        from .delivery.factory import delivery_sinks

        delivery = delivery_sinks(mqtt=mqtt, mqtt_frames=mqtt_frames, webhook=webhook, spool=spool, spool_max_mb=spool_max_mb)
        result = run_stream(
            model_dir,
            camera if camera is not None else source,
            backend=backend,
            threshold=threshold,
            events=events,
            save_anomalies=save_anomalies,
            record=record,
            show=show,
            min_consecutive=min_consecutive,
            max_frames=max_frames,
            batch=batch,
            summary_path=summary,
            reconnect=ReconnectPolicy(max_attempts=reconnect_attempts or None),
            backend_options=options,
            extra_sinks=delivery,
        )
        if result["errors"] and result["stopped_by"] in ("source lost", "error", "sink error"):
            raise AdtrError(result["errors"][-1])


def main(argv: Optional[List[str]] = None) -> int:
    app = typer.Typer(add_completion=False, no_args_is_help=True)
    register(app)

    @app.callback()
    def _root() -> None:
        """adtr-edge streaming runtime."""

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_app(app, argv)


if __name__ == "__main__":
    sys.exit(main())
