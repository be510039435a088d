"""Explicit INT8: write quantised copies of an export folder with ONNX Runtime's quantiser.

Two targets, each the fastest accurate form for its runtime (``TARGETS``):

``tensorrt``  TensorRT (8.6+, the only INT8 path in 11) needs symmetric Q/DQ, so activations and
              weights are QInt8 with zero point 0, weights per channel, static (calibrated).
              Only Conv / MatMul / Gemm get Q/DQ: TensorRT fuses the rest around them.
``cpu``       ONNX Runtime on x86. Activations QUInt8 (U8S8: the fast integer kernels on AVX2 and
              VNNI; S8S8 falls back to slower paths on CPUs without VNNI), weights 7-bit
              (``reduce_range``: AVX2's u8*s8 pair sums saturate int16 with full-range weights),
              every op ONNX Runtime has an integer kernel for quantised in the backbone (so
              activations stay uint8 between convolutions instead of a Q/DQ pair per op), and the
              transformer's MatMul/Gemm quantised dynamically (activation ranges per call, the way
              transformers get their INT8 speed-up on CPUs; no calibration), and a Mahalanobis
              head's per-location whitening MatMul written in INT8 by ``int8_head`` (7-bit
              weights per location and column), and each attention block fused into ONNX
              Runtime's ``MultiHeadAttention`` by ``attention_fusion`` (the same function, fewer
              passes over the logits). TensorRT cannot read this form (uint8 activations,
              DynamicQuantizeLinear, com.microsoft operators): ``build-engine`` refuses it.

In both, LayerNormalization and Softmax nodes (and a decomposed LayerNorm) and the error head are
excluded from ONNX Runtime's quantisers (``onnx_tools.sensitive_nodes``): transformers lose most
accuracy there, and with one scale per tensor the head's small whitened residuals would round
away (``int8_head`` scales each location's row instead). ONNX Runtime on the CPU runs either
result, so INT8 accuracy can be measured without a GPU.

Output: a folder like the export (``backbone.onnx``, ``transformer.onnx``, ``manifest.json``)
whose metadata gains ``{"quantization": {...}}``; a graph left unquantised is copied unchanged.

It lives in ``engine/`` because its inputs do: the calibration images and batches and the ONNX
graph tools that the engine builder uses too (no tensorrt import here: ONNX Runtime quantises).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx

from ..errors import AdtrError
from ..fileio import atomic_path, sha256_file, write_json_atomic
from ..folder import QDQ, read_export, read_model_folder
from ..metadata import (BACKBONE, FEATURES, GRAPHS, HEAD_MATCH_KEY, IMAGES, METADATA_KEY, TARGET_CPU, TARGET_TENSORRT, TRANSFORMER,
                        quantization_target)
from ..engine import calibration as calib
from ..engine import onnx_tools
from ..engine.onnx_tools import auto_float_modules, float_plan  # noqa: F401  (the keep-float plan: --keep-float)
from . import attention_fusion, int8_head

TENSORRT, CPU = TARGET_TENSORRT, TARGET_CPU
# What each target writes per graph: "static" (calibrated Q/DQ) or "dynamic" (weights only, the
# activation scale computed per call), the integer types, and the op types quantised (None: every op
# ONNX Runtime can quantise). For TensorRT only the compute-heavy ops get Q/DQ: quantising the cheap
# glue (preprocessing scale, Resize, Concat, the feature standardisation) only adds error there.
TARGETS = {
    TENSORRT: {
        BACKBONE: {"mode": "static", "activation_type": "QInt8", "symmetric": True, "reduce_range": False, "ops": ["Conv"]},
        TRANSFORMER: {"mode": "static", "activation_type": "QInt8", "symmetric": True, "reduce_range": False, "ops": ["MatMul", "Gemm"]},
    },
    CPU: {
        # "within": only the CNN's own nodes; the feature assembly after it (resize, pool, concat,
        # standardisation) stays float, so the features the head reads are not rounded to 8 bits.
        BACKBONE: {"mode": "static", "activation_type": "QUInt8", "symmetric": False, "reduce_range": True, "ops": None,
                   "within": "/cnn/"},
        # "head_weight_bits": the Mahalanobis head's whitening MatMul in INT8 too (``int8_head``);
        # "fuse_attention": the attention blocks as ONNX Runtime's fused operator (``attention_fusion``).
        TRANSFORMER: {"mode": "dynamic", "activation_type": "QUInt8", "symmetric": False, "reduce_range": True, "ops": ["MatMul", "Gemm"],
                      "head_weight_bits": int8_head.WEIGHT_BITS, "fuse_attention": True},
    },
}
DEFAULT_GRAPHS = {TENSORRT: (BACKBONE,), CPU: GRAPHS}  # transformers lose accuracy under static PTQ
CALIBRATION = {"method": "Percentile", "percentile": 99.99}
# What a TensorRT-target folder's metadata records (older folders recorded only this, without "target").
QUANT_SETTINGS = {"format": "QDQ", "activation_type": "QInt8", "weight_type": "QInt8", "per_channel": True,
                  "activation_symmetric": True, "weight_symmetric": True, **CALIBRATION}


class _Batches:
    """onnxruntime CalibrationDataReader over precomputed batches (subclassed lazily below)."""

    def __init__(self, name: str, batches: Sequence[np.ndarray]):
        self.name, self.batches, self.i = name, list(batches), 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return {self.name: self.batches[self.i - 1]}

    def rewind(self):
        self.i = 0


def calibration_reader(name, batches):
    from onnxruntime.quantization import CalibrationDataReader  # noqa: PLC0415

    cls = type("CalibBatches", (_Batches, CalibrationDataReader), {})
    return cls(name, batches)


def parse_target(text: str) -> str:
    if text not in TARGETS:
        raise AdtrError(f"--target {text!r}: choose one of {', '.join(TARGETS)}")
    return text


def parse_graphs(text: str | None, target: str = TENSORRT) -> list[str]:
    if text is None:
        return list(DEFAULT_GRAPHS[target])
    graphs = [g.strip() for g in text.split(",") if g.strip()]
    bad = [g for g in graphs if g not in GRAPHS]
    if bad or not graphs:
        raise AdtrError(f"--graphs {text!r}: use backbone, transformer or backbone,transformer")
    return graphs


def quantize_graph(src: Path, dst: Path, settings: dict, exclude: Sequence[str], calib_reader, only: Sequence[str] | None = None,
                   *, calibration: dict = CALIBRATION, model=None) -> None:
    """One graph through ONNX Runtime's static or dynamic quantiser, as ``settings`` (a ``TARGETS``
    entry) says, with its optional ``extra_options`` passed on to ONNX Runtime's quantiser (the
    shipped targets set none; benchmarks/int8_attention.py tries one); ``only``: quantise just
    these nodes (the per-layer sensitivity study);
    ``calibration``: method and percentile; ``model``: ``src`` already loaded (for its node names)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static  # noqa: PLC0415

    act = getattr(QuantType, settings["activation_type"])
    within = settings.get("within")
    names = [n.name for n in (model or onnx.load(str(src))).graph.node] if within else []
    if any(n.startswith(within) for n in names):  # a backbone named otherwise is quantised whole
        exclude = list(exclude) + [n for n in names if not n.startswith(within)]
    if settings["mode"] == "dynamic":
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=settings["ops"], per_channel=True,
                         reduce_range=settings["reduce_range"], weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
                         nodes_to_quantize=list(only) if only else None, extra_options=dict(settings.get("extra_options") or {}))
        return
    quantize_static(str(src), str(dst), calib_reader, quant_format=QuantFormat.QDQ, activation_type=act,
                    weight_type=QuantType.QInt8, per_channel=True, reduce_range=settings["reduce_range"],
                    nodes_to_exclude=list(exclude), op_types_to_quantize=settings["ops"], nodes_to_quantize=list(only) if only else None,
                    calibrate_method=getattr(CalibrationMethod, calibration["method"]),
                    extra_options={"ActivationSymmetric": settings["symmetric"], "WeightSymmetric": True,
                                   "CalibPercentile": calibration["percentile"], **(settings.get("extra_options") or {})})


def quantize_export(onnx_dir: Path, calib_images: Path, out: Path, graphs: Sequence[str] | None = None,
                    calib_count: int = 64, batch_size: int = 8, log=print, target: str = TENSORRT,
                    keep_float: str = "auto", fuse_attention: bool = True) -> Path:
    """Write INT8 graphs for ``graphs`` (others copied) for ``target`` into ``out``; returns ``out``.
    ``keep_float``: the backbone's mixed-precision plan (``float_plan``), recorded in the metadata;
    ``fuse_attention=False``: leave the CPU form's attention as exported (for an ONNX Runtime built
    without its contrib operators, and for measuring what the fusion gives)."""
    try:
        import onnxruntime.quantization  # noqa: F401, PLC0415
    except ImportError:
        raise AdtrError("adtr-edge quantize needs onnxruntime (pip install onnxruntime)") from None
    target = parse_target(target)
    graphs = list(DEFAULT_GRAPHS[target] if graphs is None else graphs)

    onnx_dir, out = Path(onnx_dir), Path(out)
    if out.resolve() == onnx_dir.resolve():
        raise AdtrError(f"--out {out}: must differ from the export folder")
    export = read_export(onnx_dir, purpose="quantize")
    meta = export.meta
    models = {g: onnx_tools.load(export.graph_file(g)) for g in GRAPHS}  # each graph read once
    for g in GRAPHS:
        if onnx_tools.is_quantized(models[g]):
            raise AdtrError(f"{onnx_dir}/{g}.onnx is already quantised")
    paths = calib.calibration_images(Path(calib_images), calib_count)
    batch = min(batch_size, len(paths))
    image_batches = calib.backbone_batches(paths, meta.preprocess, batch)
    plan = {g: dict(settings) for g, settings in TARGETS[target].items()}
    for settings in plan.values():
        if "fuse_attention" in settings:
            settings["fuse_attention"] = fuse_attention
    data = {BACKBONE: (IMAGES, image_batches)}
    if TRANSFORMER in graphs and plan[TRANSFORMER]["mode"] == "static":
        data[TRANSFORMER] = (FEATURES, calib.transformer_batches(export.graph_file(BACKBONE), image_batches))
    stages = (meta.raw.get("features") or {}).get("stages") or []
    float_nodes = {BACKBONE: float_plan(models[BACKBONE], keep_float, stages, target)} if BACKBONE in graphs else {}
    info = dict(QUANT_SETTINGS if target == TENSORRT else {"format": "QDQ", "weight_type": "QInt8", "per_channel": True, **CALIBRATION},
                target=target, per_graph={g: plan[g] for g in graphs}, graphs=list(graphs),
                keep_float=keep_float, float_nodes=float_nodes,
                calib_images=len(image_batches) * batch,
                calib_image_sha256=calib.image_list_sha(paths[:len(image_batches) * batch]), source=str(onnx_dir))
    meta_doc = dict(meta.raw, quantization=info)
    meta_doc.pop("graph", None)
    out.mkdir(parents=True, exist_ok=True)
    entries = {}
    for g in GRAPHS:
        dst = out / f"{g}.onnx"
        with atomic_path(dst) as tmp:
            if g in graphs:
                model = models[g]
                kept = float_nodes.get(g, [])
                exclude = onnx_tools.sensitive_nodes(model) + kept
                settings = plan[g]
                reader = calibration_reader(*data[g]) if g in data else None
                how = (f"static, {len(data[g][1])} calibration batches" if reader is not None else "dynamic (weights; activations per call)")
                log(f"{g}: quantising for {target} ({settings['activation_type']} activations, int8 per-channel weights, {how}), "
                    f"keeping {len(exclude)} nodes float" + (f" ({len(kept)} by --keep-float {keep_float})" if kept else ""))
                tmp_in = tmp.with_name(tmp.name + ".in.onnx")
                try:
                    _strip_metadata(model)
                    onnx.save(model, str(tmp_in))
                    quantize_graph(tmp_in, tmp, settings, exclude, reader, model=model)
                finally:
                    tmp_in.unlink(missing_ok=True)
                qmodel = onnx.load(str(tmp))
                if settings.get("head_weight_bits") and int8_head.quantize_whitening(qmodel, settings["head_weight_bits"]):
                    log(f"{g}: the head's whitening MatMul in INT8 ({settings['head_weight_bits']}-bit weights per location and column, "
                        "activation scales per row and call)")
                if settings.get("fuse_attention") and (fused := attention_fusion.fuse_attention(qmodel)):
                    log(f"{g}: {fused} attention blocks fused into ONNX Runtime's MultiHeadAttention")
            else:
                qmodel = models[g]  # copied unchanged but for its metadata
            _set_metadata(qmodel, dict(meta_doc, graph=g))
            onnx.save(qmodel, str(tmp))
        sha = sha256_file(dst)
        entries[g] = {"file": dst.name, "sha256": sha, "graph_sha256": sha, "quantized": g in graphs}
    manifest = dict(export.manifest, graphs=entries, meta=meta_doc, kind=QDQ)
    write_json_atomic(out / "manifest.json", manifest)
    return out


def warn_unmatched(folder: Path, log=print) -> None:
    """The CPU form under a Mahalanobis head fitted on FP32 features: point to the matched pair.
    (Its cost was -8.7 image-AUROC points on magnetic tile before the feature assembly was left
    float, -0.09 since; the matched pair refits the head on the deployed backbone either way.)"""
    meta = read_model_folder(folder, purpose="quantize").meta.raw  # just written and hashed: no second hashing
    if quantization_target(meta) == CPU and (meta.get("model") or {}).get("score") == "mahalanobis" and not meta.get(HEAD_MATCH_KEY):
        log("note: this head's statistics were fitted on FP32 features; 'adtr-edge quantize-matched CHECKPOINT --target cpu' "
            "refits them on this INT8 backbone (docs/benchmarks.md section 4.3)")


def _strip_metadata(model) -> None:
    del model.metadata_props[:]


def _set_metadata(model, doc: dict) -> None:
    props = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(doc, sort_keys=True)})
