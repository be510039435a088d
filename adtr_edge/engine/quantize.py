"""Explicit INT8: write Q/DQ copies of an export folder with ONNX Runtime's static quantiser.

TensorRT (8.6+, the only INT8 path in 11) needs symmetric quantisation, so activations and weights
are QInt8 with zero point 0, weights per channel. LayerNormalization and Softmax nodes (and a
decomposed LayerNorm) are excluded: transformers lose most accuracy there. ONNX Runtime on the CPU
runs the result, so INT8 accuracy can be measured without a GPU.

Output: a folder like the export (``backbone.onnx``, ``transformer.onnx``, ``manifest.json``)
whose metadata gains ``{"quantization": {...}}``; a graph left unquantised is copied unchanged.

It lives in ``engine/`` because its inputs do: the calibration images and batches and the ONNX
graph tools that the engine builder uses too (no tensorrt import here: ONNX Runtime quantises).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx

from ..errors import AdtrError
from ..fileio import atomic_path, sha256_file, write_json_atomic
from ..folder import QDQ, read_export
from ..metadata import BACKBONE, FEATURES, GRAPHS, IMAGES, METADATA_KEY, TRANSFORMER
from . import calibration as calib
from . import onnx_tools

QUANT_SETTINGS = {"format": "QDQ", "activation_type": "QInt8", "weight_type": "QInt8", "per_channel": True,
                  "activation_symmetric": True, "weight_symmetric": True, "method": "Percentile", "percentile": 99.99}
# Only the compute-heavy ops get Q/DQ: that is where INT8 pays on TensorRT, and quantising the
# cheap glue (preprocessing scale, Resize, Concat, the feature standardisation) only adds error.
OPS_TO_QUANTIZE = {BACKBONE: ["Conv"], TRANSFORMER: ["MatMul", "Gemm"]}


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


def _reader(name, batches):
    from onnxruntime.quantization import CalibrationDataReader  # noqa: PLC0415

    cls = type("CalibBatches", (_Batches, CalibrationDataReader), {})
    return cls(name, batches)


def parse_graphs(text: str) -> list[str]:
    graphs = [g.strip() for g in text.split(",") if g.strip()]
    bad = [g for g in graphs if g not in GRAPHS]
    if bad or not graphs:
        raise AdtrError(f"--graphs {text!r}: use backbone, transformer or backbone,transformer")
    return graphs


def quantize_export(onnx_dir: Path, calib_images: Path, out: Path, graphs: Sequence[str] = GRAPHS,
                    calib_count: int = 64, batch_size: int = 8, log=print) -> Path:
    """Write Q/DQ graphs for ``graphs`` (others copied) into ``out``; returns ``out``."""
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static  # noqa: PLC0415
    except ImportError:
        raise AdtrError("adtr-edge quantize needs onnxruntime (pip install onnxruntime)") from None

    onnx_dir, out = Path(onnx_dir), Path(out)
    if out.resolve() == onnx_dir.resolve():
        raise AdtrError(f"--out {out}: must differ from the export folder")
    export = read_export(onnx_dir, purpose="quantize")
    meta = export.meta
    for g in GRAPHS:
        if onnx_tools.has_qdq(onnx_tools.load(export.graph_file(g))):
            raise AdtrError(f"{onnx_dir}/{g}.onnx is already quantised")
    paths = calib.calibration_images(Path(calib_images), calib_count)
    batch = min(batch_size, len(paths))
    image_batches = calib.backbone_batches(paths, meta.preprocess, batch)
    data = {BACKBONE: (IMAGES, image_batches)}
    if TRANSFORMER in graphs:
        data[TRANSFORMER] = (FEATURES, calib.transformer_batches(export.graph_file(BACKBONE), image_batches))
    info = dict(QUANT_SETTINGS, graphs=list(graphs), calib_images=len(image_batches) * batch,
                calib_image_sha256=calib.image_list_sha(paths[:len(image_batches) * batch]), source=str(onnx_dir))
    meta_doc = dict(meta.raw, quantization=info)
    meta_doc.pop("graph", None)
    out.mkdir(parents=True, exist_ok=True)
    entries = {}
    for g in GRAPHS:
        src = export.graph_file(g)
        dst = out / f"{g}.onnx"
        with atomic_path(dst) as tmp:
            if g in graphs:
                model = onnx_tools.load(src)
                exclude = onnx_tools.sensitive_nodes(model)
                name, batches = data[g]
                log(f"{g}: quantising (QDQ int8, per-channel, symmetric), {len(batches)} batches, keeping {len(exclude)} nodes float")
                tmp_in = tmp.with_name(tmp.name + ".in.onnx")
                try:
                    _strip_metadata(model)
                    onnx.save(model, str(tmp_in))
                    quantize_static(str(tmp_in), str(tmp), _reader(name, batches), quant_format=QuantFormat.QDQ,
                                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                                    nodes_to_exclude=exclude, op_types_to_quantize=OPS_TO_QUANTIZE[g],
                                    calibrate_method=CalibrationMethod.Percentile,
                                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                                   "CalibPercentile": QUANT_SETTINGS["percentile"]})
                finally:
                    tmp_in.unlink(missing_ok=True)
                qmodel = onnx.load(str(tmp))
            else:
                shutil.copyfile(src, tmp)
                qmodel = onnx.load(str(tmp))
            _set_metadata(qmodel, dict(meta_doc, graph=g))
            onnx.save(qmodel, str(tmp))
        entries[g] = {"file": dst.name, "sha256": sha256_file(dst), "graph_sha256": sha256_file(dst),
                      "quantized": g in graphs}
    manifest = dict(export.manifest, graphs=entries, meta=meta_doc, kind=QDQ)
    write_json_atomic(out / "manifest.json", manifest)
    return out


def _strip_metadata(model) -> None:
    del model.metadata_props[:]


def _set_metadata(model, doc: dict) -> None:
    props = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(doc, sort_keys=True)})
