"""The self-description that travels with every exported graph and engine.

One JSON document, stored under the key ``adtr_edge`` in each ONNX graph's ``metadata_props``, in
the export manifest, and in each engine's manifest. Loading code reads input size, layout, colour
order, mean/std, grid, channels and thresholds from here, never from side knowledge.

This module needs no torch and no onnx at import time (the runtime imports it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .version import __version__
from .errors import AdtrError
from .postprocessing import Thresholds
from .preprocessing import PreprocessSpec

FORMAT = "adtr-edge/1"
METADATA_KEY = "adtr_edge"
# Set on a quantisation-matched pair: the digest of the Q/DQ backbone graph the score head was fitted on.
HEAD_MATCH_KEY = "head_matched_to_backbone"
# ``postprocess.image_score`` of a graph whose head scores with the map alone (and of folders written
# before the field existed)
MAP_ONLY_SCORE = {"image_score": "the map's score"}
# Quantisation targets an INT8 folder's metadata names (``{"quantization": {"target": ...}}``):
# symmetric Q/DQ for TensorRT, or the U8S8/dynamic form for ONNX Runtime on CPUs.
TARGET_TENSORRT, TARGET_CPU = "tensorrt", "cpu"


def quantization_target(meta_raw: dict) -> str | None:
    """The quantisation target a folder's metadata records (older folders: tensorrt), or None."""
    q = meta_raw.get("quantization")
    return (q.get("target") or TARGET_TENSORRT) if q else None


def onnxruntime_config(meta_raw: dict) -> dict[str, str]:
    """ONNX Runtime session config entries a folder's graphs need to compute what they mean.

    A TensorRT-form INT8 folder runs its Q/DQ pairs unfused: each pair then rounds exactly as
    TensorRT does. Fused, ONNX Runtime's integer kernels on x86 CPUs without VNNI form u8*s8 pair
    sums in int16 (VPMADDUBSW), which saturate once int8 activations are shifted to uint8 (on the
    magnetic-tile backbone: features 129% off FP32 fused, 53% with exact rounding; docs/benchmarks.md
    section 4.3). The ``cpu`` form (uint8 activations, 7-bit weights) cannot saturate and runs fused.
    """
    return onnxruntime_config_for_target(quantization_target(meta_raw))


def onnxruntime_config_for_target(target: str | None) -> dict[str, str]:
    """``onnxruntime_config`` of a folder quantised for ``target`` (None: not quantised)."""
    return {"session.disable_quant_qdq": "1"} if target == TARGET_TENSORRT else {}

# Tensor names of the two graphs: the contract between export, engine building and the runtime.
IMAGES = "images"  # backbone input: uint8 (N, H, W, 3) BGR
FEATURES = "features"  # backbone output / transformer input: float32 (N, C, h, w)
ANOMALY_MAP = "anomaly_map"  # transformer output: float32 (N, 1, H, W)
SCORE = "score"  # transformer output: float32 (N,)

BACKBONE = "backbone"
TRANSFORMER = "transformer"
GRAPHS = (BACKBONE, TRANSFORMER)


@dataclass
class ModelMeta:
    """Typed view of the metadata document."""

    raw: dict[str, Any]

    @property
    def preprocess(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.raw["preprocess"])

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds.from_dict(self.raw["postprocess"]["thresholds"])

    @property
    def channels(self) -> int:
        return int(self.raw["features"]["channels"])

    @property
    def grid(self) -> tuple[int, int]:
        g = self.raw["features"]["grid"]
        return int(g[0]), int(g[1])

    @property
    def input_size(self) -> tuple[int, int]:
        p = self.raw["preprocess"]
        return int(p["height"]), int(p["width"])

    @property
    def pool_kernel(self) -> int:
        return int(self.raw["postprocess"]["pool_kernel"])

    @property
    def image_score(self) -> dict:
        """How the graph makes its image score (``AnomalyHead.describe``); folders written before the
        regional term existed score with the map alone."""
        return self.raw["postprocess"].get("image_score", MAP_ONLY_SCORE)

    @property
    def graph(self) -> str | None:
        return self.raw.get("graph")

    def for_graph(self, graph: str, **extra) -> "ModelMeta":
        d = dict(self.raw)
        d["graph"] = graph
        d.update(extra)
        return ModelMeta(d)

    def to_json(self) -> str:
        return json.dumps(self.raw, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "metadata") -> "ModelMeta":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise AdtrError(f"{source}: adtr-edge metadata is not valid JSON ({e})") from None
        return cls.validate(d, source)

    @classmethod
    def validate(cls, d: dict, source: str = "metadata") -> "ModelMeta":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise AdtrError(f"{source}: not adtr-edge metadata (format {d.get('format') if isinstance(d, dict) else None!r}, expected {FORMAT!r})")
        for key in ("preprocess", "features", "postprocess", "model"):
            if key not in d:
                raise AdtrError(f"{source}: adtr-edge metadata lacks '{key}'")
        return cls(d)


def build_metadata(
    *,
    model_config: dict,
    preprocess: PreprocessSpec,
    channels: int,
    grid: tuple[int, int],
    stages: list[int],
    thresholds: Thresholds,
    pool_kernel: int,
    image_score: dict | None = None,
    data_summary: dict | None = None,
    extra: dict | None = None,
) -> ModelMeta:
    d = {
        "format": FORMAT,
        "toolkit_version": __version__,
        "model": model_config,
        "preprocess": preprocess.to_dict(),
        "features": {"name": FEATURES, "channels": int(channels), "grid": [int(grid[0]), int(grid[1])], "stages": list(stages)},
        "postprocess": {
            "thresholds": thresholds.to_dict(),
            "pool_kernel": int(pool_kernel),
            "image_score": image_score or MAP_ONLY_SCORE,
            "map_size": [preprocess.height, preprocess.width],
            "normalized_score": "clamp((score - threshold) / (score_max - score_min) + 0.5, 0, 1)",
        },
        "tensors": {
            "backbone": {"inputs": {IMAGES: ["batch", preprocess.height, preprocess.width, 3]},
                         "outputs": {FEATURES: ["batch", int(channels), int(grid[0]), int(grid[1])]}},
            "transformer": {"inputs": {FEATURES: ["batch", int(channels), int(grid[0]), int(grid[1])]},
                            "outputs": {ANOMALY_MAP: ["batch", 1, preprocess.height, preprocess.width], SCORE: ["batch"]}},
        },
        "data": data_summary or {},
    }
    if extra:
        d.update(extra)
    return ModelMeta(d)


def read_onnx_metadata(model_or_path) -> ModelMeta:
    """Read the metadata of an ONNX graph (a path or an ``onnx.ModelProto``)."""
    import onnx  # local: the runtime reads metadata through its backend instead

    source = str(model_or_path) if not hasattr(model_or_path, "metadata_props") else "graph"
    if hasattr(model_or_path, "metadata_props"):
        model = model_or_path
    else:
        try:
            model = onnx.load(str(model_or_path), load_external_data=False)
        except Exception as e:  # onnx raises several types for bad files
            raise AdtrError(f"cannot read ONNX file {model_or_path}: {e}") from None
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise AdtrError(f"{source}: no adtr-edge metadata (was it made by 'adtr-edge export'?)")
    return ModelMeta.from_json(props[METADATA_KEY], source)
