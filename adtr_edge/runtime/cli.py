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
from ..config_file import command_line_wins, config_option
from ..errors import AdtrError
from ..cuda.base import CUDA_BINDINGS
from .backends.triton import DEFAULT_NAME as TRITON_MODEL, DEFAULT_RECONNECT_S, DEFAULT_TIMEOUT_S
from . import registry
from .loading import default_model_dir, read_model_folder
from .multisource import GATHER_S
from .registry import option_help

# stream --help groups its options into these panels (typer's rich_help_panel).
SOURCE, MODEL, ALARMS, DELIVERY, WEB, PERFORMANCE = (
    "Source", "Model", "Alarms and outputs", "Delivery (MQTT, webhook)", "Web view and metrics", "Performance")


def tensorrt_options(model_dir: Path, backend: str, cuda_graphs: bool, cuda_binding: str) -> dict:
    """Backend options from --cuda-graphs / --cuda-binding; refused where they cannot apply."""
    if cuda_binding not in CUDA_BINDINGS:
        raise AdtrError(f"--cuda-binding {cuda_binding!r}: choose one of {', '.join(CUDA_BINDINGS)}")
    asked = [flag for flag, on in (("--cuda-graphs", cuda_graphs), ("--cuda-binding", cuda_binding != "auto")) if on]
    if not asked:
        return {}
    what = " and ".join(asked) + (" apply" if len(asked) > 1 else " applies")
    owner = registry.option_owner("--cuda-graphs")
    if backend not in ("auto", owner.name):
        raise AdtrError(f"{what} to the {owner.label} backend only, not --backend {backend}")
    folder = read_model_folder(model_dir)
    if folder.kind not in owner.kinds:
        raise AdtrError(f"{what} to the {owner.label} backend only; {folder.path} is {folder.spec.what} "
                        "(build engines from it with 'adtr-edge build-engine')")
    options: dict = {"cuda_binding": cuda_binding}
    if cuda_graphs:
        options["cuda_graphs"] = True
    return options


def triton_options(backend: str, server: Optional[str], protocol: str, triton_model: str, server_timeout: float,
                   server_reconnect: float) -> dict:
    """Backend options from --server / --protocol / --triton-model; refused without --backend triton."""
    owner = registry.option_owner("--server")
    if backend != owner.name:
        if server is not None:
            raise AdtrError(f"--server applies to --backend {owner.name} only")
        return {}
    return {"server": server, "protocol": protocol, "model_name": triton_model, "timeout_s": server_timeout,
            "reconnect_s": server_reconnect}


def stream_sources(camera: Optional[List[str]], source: Optional[List[str]], sources_file: Optional[Path]):
    """What ``run_stream`` gets from --camera / --source / --sources: one plain spelling (a single
    unnamed source, as before) or a list of NamedSource entries."""
    from .source_list import camera_entry, load_source_list, split_name

    given = [v for v in (camera, source, sources_file) if v]
    if len(given) != 1:
        raise AdtrError("give exactly one of --camera N or --source S (both repeatable; NAME=... names one) or --sources FILE")
    if camera:
        entries = [camera_entry(c) for c in camera]
    elif source:
        entries = [split_name(s) for s in source]
    else:
        entries = load_source_list(sources_file)
    if len(entries) == 1 and entries[0].name is None:
        return entries[0].spec
    return entries


def register(app: typer.Typer) -> None:
    @app.command("stream")
    def stream(
        ctx: typer.Context,
        model_dir: Optional[Path] = typer.Argument(
            None, show_default=False,
            help="ONNX export folder or TensorRT engine folder (with manifest.json). "
                 "Default: the only folder under ./engines/, else ./adtr-demo/onnx.", rich_help_panel=MODEL,
        ),
        config: Optional[Path] = config_option(),
        camera: Optional[List[str]] = typer.Option(
            None, "--camera", help="Camera index, e.g. 0; NAME=N names it (left=0). Repeat for several cameras.", show_default=False, rich_help_panel=SOURCE),
        source: Optional[List[str]] = typer.Option(
            None, "--source", show_default=False,
            help="Video file, folder or glob of images, rtsp://..., csi://N, v4l2:///dev/videoN, file://..., or a GStreamer pipeline; "
                 "NAME=S names it. Repeat for several sources (batched through one model).", rich_help_panel=SOURCE,
        ),
        sources_file: Optional[Path] = typer.Option(
            None, "--sources", help="JSON list (YAML with PyYAML) of {name, source} entries: several sources through one model.", rich_help_panel=SOURCE),
        backend: str = typer.Option("auto", "--backend", help=registry.backend_help(registry.STREAM), rich_help_panel=MODEL),
        events: Optional[str] = typer.Option(None, "--events", help=option_help("--events"), rich_help_panel=ALARMS),
        save_anomalies: Optional[Path] = typer.Option(None, "--save-anomalies", help=option_help("--save-anomalies"), rich_help_panel=ALARMS),
        record: Optional[Path] = typer.Option(None, "--record", help=option_help("--record"), rich_help_panel=ALARMS),
        show: bool = typer.Option(False, "--show", help=option_help("--show"), rich_help_panel=ALARMS),
        min_consecutive: int = typer.Option(1, "--min-consecutive", min=1, help="Alarm after N anomalous frames in a row.", rich_help_panel=ALARMS),
        threshold: Optional[float] = typer.Option(None, "--threshold", help="Raw-score threshold (default: the exported one).", rich_help_panel=ALARMS),
        max_frames: Optional[int] = typer.Option(None, "--max-frames", min=1, help="Stop after N frames.", rich_help_panel=SOURCE),
        batch: int = typer.Option(1, "--batch", min=1, help="Micro-batch size for files and folders (live sources use 1).", rich_help_panel=PERFORMANCE),
        summary: Optional[Path] = typer.Option(None, "--summary", help="Write the summary JSON to FILE.", rich_help_panel=ALARMS),
        threads: Optional[int] = typer.Option(None, "--threads", min=1, help=option_help("--threads"), rich_help_panel=PERFORMANCE),
        spin: Optional[bool] = typer.Option(None, "--spin/--no-spin", show_default=False,
                                            help=option_help("--spin/--no-spin"), rich_help_panel=PERFORMANCE),
        reconnect_attempts: int = typer.Option(10, "--reconnect-attempts", min=0, help="Reconnect tries for a lost live source (0 = forever).", rich_help_panel=SOURCE),
        cuda_graphs: bool = typer.Option(False, "--cuda-graphs", help=option_help("--cuda-graphs"), rich_help_panel=PERFORMANCE),
        cuda_binding: str = typer.Option("auto", "--cuda-binding", help=option_help("--cuda-binding"), rich_help_panel=MODEL),
        server: Optional[str] = typer.Option(None, "--server", rich_help_panel=MODEL,
                                             help=option_help("--server")),
        protocol: str = typer.Option("grpc", "--protocol", help=option_help("--protocol"), rich_help_panel=MODEL),
        triton_model: str = typer.Option(TRITON_MODEL, "--triton-model", help=option_help("--triton-model"), rich_help_panel=MODEL),
        server_timeout: float = typer.Option(DEFAULT_TIMEOUT_S, "--server-timeout", help=option_help("--server-timeout"), rich_help_panel=MODEL),
        server_reconnect: float = typer.Option(DEFAULT_RECONNECT_S, "--server-reconnect", rich_help_panel=MODEL,
                                               help=option_help("--server-reconnect")),
        http: Optional[str] = typer.Option(None, "--http", help=option_help("--http"), rich_help_panel=WEB),
        http_token: Optional[str] = typer.Option(None, "--http-token", envvar="ADTR_HTTP_TOKEN",
                                                 help=option_help("--http-token"), rich_help_panel=WEB),
        metrics: Optional[str] = typer.Option(None, "--metrics", help=option_help("--metrics"), rich_help_panel=WEB),
        follow_model: bool = typer.Option(
            False, "--follow-model", help=option_help("--follow-model"), rich_help_panel=MODEL),
        review_dir: Optional[Path] = typer.Option(
            None, "--review-dir", help=option_help("--review-dir"), rich_help_panel=WEB),
        gather_ms: float = typer.Option(GATHER_S * 1e3, "--gather-ms", min=0.0,
                                        help="Several sources: how long a step waits for a source with no frame ready (ms).", rich_help_panel=PERFORMANCE),
        mqtt: Optional[str] = typer.Option(
            None, "--mqtt", help=option_help("--mqtt"), rich_help_panel=DELIVERY),
        mqtt_frames: bool = typer.Option(False, "--mqtt-frames", help=option_help("--mqtt-frames"), rich_help_panel=DELIVERY),
        webhook: Optional[str] = typer.Option(None, "--webhook", help=option_help("--webhook"), rich_help_panel=DELIVERY),
        spool: Optional[Path] = typer.Option(None, "--spool", help=option_help("--spool"), rich_help_panel=DELIVERY),
        spool_max_mb: float = typer.Option(64.0, "--spool-max-mb", rich_help_panel=DELIVERY,
                                           help=option_help("--spool-max-mb")),
    ) -> None:
        """Stream a camera, stream, video or image folder through the model; events, alarms, summary."""
        from .pipeline import run_stream
        from .sources import ReconnectPolicy

        # A source on the command line replaces the config file's, rather than being a second one.
        picked = command_line_wins(ctx, {"camera": camera, "source": source, "sources_file": sources_file})
        chosen = stream_sources(picked["camera"], picked["source"], picked["sources_file"])
        registry.check_choice(registry.STREAM, backend)  # before a port binds or a spool opens
        if model_dir is None:
            model_dir = default_model_dir()
            typer.echo(f"model: {model_dir}", err=True)
        options = {"intra_op_threads": threads} if threads is not None else {}
        if spin is not None:
            options["spinning"] = spin
        options.update(tensorrt_options(model_dir, backend, cuda_graphs, cuda_binding))
        options.update(triton_options(backend, server, protocol, triton_model, server_timeout, server_reconnect))
        from .delivery.factory import delivery_sinks  # paho-mqtt only with --mqtt
        from .web import open_frontend  # starlette/uvicorn/prometheus_client only with --http/--metrics

        # Binds now and checks the review folder: a port in use or an unwritable folder fails first.
        web = open_frontend(model_dir, http=http, metrics=metrics, token=http_token, review_dir=review_dir)
        delivery: list = []
        try:
            # Checked (URLs, topics, spool folder) before the model loads; nothing connects yet.
            delivery = delivery_sinks(mqtt=mqtt, mqtt_frames=mqtt_frames, webhook=webhook, spool=spool, spool_max_mb=spool_max_mb)
            if follow_model:
                from .model_watch import ModelWatcher

                delivery.append(ModelWatcher(model_dir))
            result = run_stream(
                model_dir,
                chosen,
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
                extra_sinks=[*web, *delivery],
                gather_ms=gather_ms,
            )
        finally:
            for sink in [*web, *delivery]:  # closed again is a no-op; this covers a model that fails to load
                sink.close()
        if result["errors"] and result["stopped_by"] in ("source lost", "error", "sink error"):
            raise AdtrError(result["errors"][-1])

    register_review(app)

    @app.command("swap")
    def swap(
        url: str = typer.Argument(..., help="The running stream's web view, e.g. http://127.0.0.1:8080 (stream --http)."),
        model_dir: Path = typer.Argument(..., help="The model folder to switch to (as the stream's machine sees the path)."),
        token: Optional[str] = typer.Option(None, "--token", envvar="ADTR_HTTP_TOKEN", help="The stream's --http-token."),
        timeout: float = typer.Option(120.0, "--timeout", help="Seconds to wait for the load and the switch."),
    ) -> None:
        """Switch a running stream to another model folder between two frames (POST /api/model)."""
        import json
        import urllib.error
        import urllib.request

        body = json.dumps({"path": str(model_dir.resolve())}).encode()
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
        req = urllib.request.Request(url.rstrip("/") + "/api/model", data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                reply = json.loads(r.read())
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read()).get("error")
            except ValueError:
                message = None
            raise AdtrError(f"{url}: {message or f'HTTP {e.code}'}") from None
        except (urllib.error.URLError, OSError) as e:
            raise AdtrError(f"{url}: cannot reach the stream's web view ({getattr(e, 'reason', e)})") from None
        sw = reply["swap"]
        typer.echo(f"swapped {sw['from'].get('digest')} -> {sw['to'].get('digest')} ({sw['to'].get('path')}) "
                   f"after {sw['frames_before']} frames; threshold {sw['threshold']:.6g}; loaded in {sw['load_s']:.2f} s")


def register_review(app: typer.Typer) -> None:
    review = typer.Typer(no_args_is_help=True, help="The review folder: operators' verdicts as an MVTec-layout dataset.")
    app.add_typer(review, name="review")

    @review.command("add")
    def review_add(
        folder: Path = typer.Argument(..., help="The review folder (created if missing; the one stream --review-dir names)."),
        images: List[Path] = typer.Argument(..., help="Frames to add, e.g. --save-anomalies' *_frame.png or frames cut from a --record video."),
        verdict: str = typer.Option(..., "--verdict", help="defect | normal (normal: a false alarm, 'not a defect')."),
        label: str = typer.Option("defect", "--label", help="Defect kind: the test/<label> folder."),
        mask: Optional[Path] = typer.Option(None, "--mask", help="The defect's region (non-zero inside), the image's size; one image only."),
        source: Optional[str] = typer.Option(None, "--source", help="Where the frames came from (default: each file's path)."),
        score: Optional[float] = typer.Option(None, "--score", help="The score the model gave (for the sidecar)."),
        model: Optional[Path] = typer.Option(None, "--model", help="The model folder that scored the frames (its digest goes in the sidecar)."),
        by: Optional[str] = typer.Option(None, "--by", help="Who reviewed (default: the user name)."),
    ) -> None:
        """Add frames to a review folder with the operator's verdict; each with a JSON sidecar."""
        import getpass

        from ..preprocessing import read_image, read_mask
        from .review import ReviewFolder, check_label, model_digest

        if verdict not in ("defect", "normal"):
            raise AdtrError(f"--verdict {verdict!r}: choose defect or normal")
        if verdict == "defect":
            check_label(label)
        if mask is not None and (verdict != "defect" or len(images) != 1):
            raise AdtrError("--mask marks one defect's region: give it with --verdict defect and exactly one image")
        # Everything is read and checked before the first file is written: a bad image or mask
        # later in the list leaves the folder as it was.
        frames = [read_image(p) for p in images]
        painted = read_mask(mask).astype("uint8") if mask is not None else None
        if painted is not None and painted.shape != frames[0].shape[:2]:
            raise AdtrError(f"--mask {mask}: is {painted.shape[1]}x{painted.shape[0]}, the image {images[0]} is "
                            f"{frames[0].shape[1]}x{frames[0].shape[0]}")
        digest = model_digest(model) if model is not None else None
        try:
            who = by or getpass.getuser()
        except (KeyError, OSError):
            who = None
        folder_ = ReviewFolder(folder, option="review add")
        added: list = []
        try:
            for path, image in zip(images, frames):
                added.append(folder_.add(image, verdict, label=label, mask=painted, source=source or str(path), name=path.name,
                                         score=score, model=digest, reviewer={"by": "adtr-edge review add", "user": who}))
        except BaseException:
            for record in added:  # all or nothing for one command
                folder_.remove(record["id"])
            raise
        for record in added:
            typer.echo(f"{record['image']}" + (f"  mask {record['mask']}" if record["mask"] else ""))

    @review.command("undo")
    def review_undo(
        folder: Path = typer.Argument(..., help="The review folder."),
        ids: List[str] = typer.Argument(..., help="Review ids (the file names without .png; the sidecars' 'id')."),
    ) -> None:
        """Take reviews out of the folder again: image, mask and sidecar (the image first)."""
        from .review import ReviewFolder

        if not folder.is_dir():
            raise AdtrError(f"review undo {folder}: not a folder")
        folder_ = ReviewFolder(folder, option="review undo")
        missing = [rid for rid in ids if folder_.find(rid) is None]
        if missing:  # checked first: an undo of several is all or nothing
            raise AdtrError(f"review undo {folder}: no review {missing[0]!r} (already undone?)")
        for rid in ids:
            record = folder_.remove(rid)
            typer.echo(f"removed {record['image']}" + (f"  mask {record['mask']}" if record.get("mask") else ""))


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
