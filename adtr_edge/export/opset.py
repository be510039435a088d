"""Which ONNX opset to export for the TensorRT that will build the engines (torch-free).

Opset 17 writes LayerNorm as one ``LayerNormalization`` node, which TensorRT imports from 8.6 on
(as a normalization layer that computes in FP32). TensorRT 8.5 (JetPack 5) has no importer for it,
so it needs opset 16, where LayerNorm is decomposed into elementwise ops the builder pins to FP32.
"""

from __future__ import annotations

import re
from typing import Optional

from ..errors import AdtrError

DEFAULT_OPSET = 17
OLD_TRT_OPSET = 16
LAYERNORM_TRT = (8, 6)  # first TensorRT with a LayerNormalization importer


def parse_version(text: str) -> tuple[int, int]:
    """'10.3.0.30' -> (10, 3). Unparseable text is a clear error (a broken install).

    Here, below ``engine/``, because both the exporter (which opset) and the TensorRT shim read it."""
    m = re.match(r"^\s*(\d+)\.(\d+)", str(text))
    if not m:
        raise AdtrError(f"cannot read the TensorRT version from tensorrt.__version__ = {text!r}")
    return int(m.group(1)), int(m.group(2))


def opset_for_trt(trt_version: str) -> int:
    """16 for TensorRT older than 8.6, else 17. ``trt_version``: 'X.Y' or a full version string."""
    return OLD_TRT_OPSET if _parse(trt_version) < LAYERNORM_TRT else DEFAULT_OPSET


def choose_opset(opset: Optional[int] = None, trt_version: Optional[str] = None) -> int:
    """The opset to export: an explicit ``opset`` wins, but one the target cannot import is an error."""
    if trt_version is None:
        return DEFAULT_OPSET if opset is None else opset
    wanted = opset_for_trt(trt_version)
    if opset is None:
        return wanted
    if opset >= DEFAULT_OPSET and wanted < DEFAULT_OPSET:
        raise AdtrError(
            f"--opset {opset} conflicts with --trt-version {trt_version}: TensorRT before 8.6 cannot import "
            f"LayerNormalization; use --opset {OLD_TRT_OPSET} (or drop --opset)"
        )
    return opset


def _parse(trt_version: str) -> tuple:
    try:
        return parse_version(trt_version)
    except AdtrError:
        raise AdtrError(f"--trt-version {trt_version!r}: use the TensorRT version as X.Y, e.g. 8.5 or 10.3") from None
