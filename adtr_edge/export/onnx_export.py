"""Export a checkpoint as ``backbone.onnx`` + ``transformer.onnx`` + ``manifest.json``.

Two graphs because the halves want different things on a Jetson: the CNN quantises well to INT8
and fits the DLA, the transformer wants FP16 on the GPU, and two engines can overlap across frames.

Choices that matter downstream:
* the TorchScript exporter (``dynamo=False``) with ``dynamic_axes``: it keeps the batch symbolic
  whatever the example batch; the example batch is 2 anyway, because the dynamo exporter silently
  specialises a batch of 1;
* opset 17 by default, so LayerNorm is one ``LayerNormalization`` node that TensorRT 8.6+ runs in
  FP32 inside FP16 engines; opset 16 for TensorRT 8.5 (JetPack 5), where it is decomposed;
* the metadata document (``adtr_edge.metadata``) goes into each graph's ``metadata_props`` and the
  manifest, with a digest of the graph computed *before* the metadata is attached.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from ..version import __version__
from ..errors import AdtrError, require
from ..fileio import sha256_bytes, sha256_file, write_json_atomic
from ..folder import KINDS, MANIFEST, ONNX
from ..frame_quality import QUALITY_KEY
from ..metadata import HEAD_MATCH_KEY, ANOMALY_MAP, BACKBONE, FEATURES, IMAGES, METADATA_KEY, SCORE, TRANSFORMER, build_metadata
from ..preprocessing import preprocess_spec
from ..train.checkpoint import load_checkpoint
from ..train.head_select import head_summary

log = logging.getLogger(__name__)

SUPPORTED_OPSETS = range(13, 21)


@dataclass
class ExportResult:
    folder: Path
    manifest: dict


def graph_digest(model: onnx.ModelProto) -> str:
    """sha256 of the graph without its metadata (stable across metadata edits)."""
    clone = onnx.ModelProto()
    clone.CopyFrom(model)
    del clone.metadata_props[:]
    return sha256_bytes(clone.SerializeToString())


def _to_onnx(module: torch.nn.Module, example: torch.Tensor, inputs: list[str], outputs: list[str], opset: int) -> onnx.ModelProto:
    buf = io.BytesIO()
    dynamic = {name: {0: "batch"} for name in inputs + outputs}
    # The tracer warns about shape comparisons that are static by construction (fixed input size).
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module, (example,), buf, input_names=inputs, output_names=outputs, dynamic_axes=dynamic,
            opset_version=opset, do_constant_folding=True, dynamo=False,
        )
    return onnx.load_from_string(buf.getvalue())


def simplify(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """Constant-fold and clean the graph with onnxsim (checked against ONNX Runtime by onnxsim)."""
    try:
        import onnxsim
    except ImportError:
        return model
    with _native_output() as captured:
        simplified, ok = onnxsim.simplify(model)
    _report_native_output(captured(), name)
    if not ok:
        raise AdtrError(f"onnxsim could not validate the simplified {name} graph; export with --no-simplify")
    return simplified


# onnxsim's C++ side prints this when constant folding meets a node it cannot evaluate ahead of time
# (here: the Reshape of the transformer's tokens, whose shape depends on the dynamic batch). The
# node stays in the graph and runs at inference; onnxsim still checks the result against ONNX
# Runtime (``ok`` below). A new user reads "WARNING: failed to run" as a failed export, so it is
# reported as one log line that says it is harmless; any other native output passes through.
_HARMLESS_FOLD = re.compile(r'^WARNING: failed to run "(\w+)" op \(name is "([^"]*)"\), skip\.\.\.$')


@contextlib.contextmanager
def _native_output():
    """Capture what native code writes to fd 1 and 2 (Python's sys.stdout cannot see it)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as tmp:
        text: list[str] = []
        try:
            os.dup2(tmp.fileno(), 1)
            os.dup2(tmp.fileno(), 2)
            yield lambda: text[0] if text else ""
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            tmp.seek(0)
            text.append(tmp.read().decode(errors="replace"))


def _report_native_output(text: str, graph: str) -> None:
    folded = []
    for line in text.splitlines():
        m = _HARMLESS_FOLD.match(line.strip())
        if m:
            folded.append(f"{m.group(1)} {m.group(2)}")
        elif line.strip():
            print(line, file=sys.stderr)
    if folded:
        log.info("onnxsim left %d node(s) of the %s graph unfolded (computed at run time, harmless): %s",
                 len(folded), graph, ", ".join(folded))


def pin_output_shapes(model: onnx.ModelProto, shapes: dict) -> None:
    """Declare the static output dims that shape inference cannot see through Resize.

    TensorRT and users read these declarations; ``batch`` stays symbolic.
    """
    for out in model.graph.output:
        if out.name not in shapes:
            continue
        dims = out.type.tensor_type.shape.dim
        del dims[:]
        for d in shapes[out.name]:
            dim = dims.add()
            if isinstance(d, str):
                dim.dim_param = d
            else:
                dim.dim_value = int(d)


def set_metadata(model: onnx.ModelProto, doc_json: str) -> None:
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, doc_json


def checkpoint_metadata(model, ckpt, thresholds, **extra_fields):
    """The model metadata (adtr_edge.metadata) of a loaded checkpoint: what the export writes into
    its graphs and what bench's torch backend runs with, made in one place."""
    cfg = ckpt.model_config
    return build_metadata(model_config=cfg.to_dict(), preprocess=preprocess_spec(cfg), channels=model.backbone.channels,
                          grid=cfg.grid, stages=list(cfg.stages), thresholds=thresholds, pool_kernel=model.head.kernel,
                          image_score=model.head.describe(), **extra_fields)


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, *, opset: int = 17, force: bool = False,
                      do_simplify: bool = True) -> ExportResult:
    out_dir = Path(out_dir)
    require(opset in SUPPORTED_OPSETS, f"--opset {opset}: supported range is {SUPPORTED_OPSETS.start}-{SUPPORTED_OPSETS.stop - 1} (17 default; 16 for TensorRT 8.5)")
    existing = [p.name for p in (out_dir / "backbone.onnx", out_dir / "transformer.onnx", out_dir / MANIFEST) if p.exists()]
    require(not existing or force, f"{out_dir} already holds {', '.join(existing)}; pass --force to overwrite")
    model, ckpt = load_checkpoint(checkpoint, device="cpu")
    require(ckpt.thresholds is not None, f"checkpoint {checkpoint} has no calibrated threshold (training did not finish); train again or --resume")
    cfg = ckpt.model_config
    spec = preprocess_spec(cfg)
    images = torch.randint(0, 256, (2, spec.height, spec.width, 3), dtype=torch.uint8)
    features = model.backbone(images)

    graphs = {
        BACKBONE: _to_onnx(model.backbone, images, [IMAGES], [FEATURES], opset),
        TRANSFORMER: _to_onnx(model.transformer_graph(), features, [FEATURES], [ANOMALY_MAP, SCORE], opset),
    }
    meta = checkpoint_metadata(
        model, ckpt, ckpt.thresholds, data_summary=ckpt.data_summary,
        extra={"opset": opset, "weights_source": ckpt.extra.get("weights_source"), "checkpoint_files": {"model.safetensors": sha256_file(Path(checkpoint) / "model.safetensors")},
               "score_head": head_summary(ckpt),
               **({HEAD_MATCH_KEY: ckpt.extra[HEAD_MATCH_KEY]} if ckpt.extra.get(HEAD_MATCH_KEY) else {}),
               **({QUALITY_KEY: ckpt.extra[QUALITY_KEY]} if ckpt.extra.get(QUALITY_KEY) else {})},
    )
    manifest = {"format": KINDS[ONNX].format, "toolkit_version": __version__, "kind": ONNX, "graphs": {}, "meta": meta.raw}
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-export-", dir=out_dir))
    try:
        for name, proto in graphs.items():
            if do_simplify:
                proto = simplify(proto, name)
            pin_output_shapes(proto, meta.raw["tensors"][name]["outputs"])
            proto.producer_name, proto.producer_version = "adtr-edge", __version__
            digest = graph_digest(proto)
            set_metadata(proto, meta.for_graph(name, graph_sha256=digest).to_json())
            onnx.checker.check_model(proto, full_check=True)
            path = staging / f"{name}.onnx"
            onnx.save(proto, str(path))
            manifest["graphs"][name] = {"file": path.name, "sha256": sha256_file(path), "graph_sha256": digest,
                                         "bytes": path.stat().st_size, "opset": opset}
        # Move the finished graphs into place, then the manifest: a folder with a manifest is complete.
        if (out_dir / MANIFEST).exists():
            (out_dir / MANIFEST).unlink()
        for name in graphs:
            (staging / f"{name}.onnx").replace(out_dir / f"{name}.onnx")
        write_json_atomic(out_dir / MANIFEST, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(out_dir, manifest)
