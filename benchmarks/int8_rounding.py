"""INT8 feature error of the backbone: fused kernels vs exact rounding, mixed-precision plans, calibration methods.

    python benchmarks/int8_rounding.py EXPORT_DIR --data DATASET [--json FILE]

Relative error ||f_int8 - f|| / ||f|| of the standardised features (and per backbone stage) on 16
training normals that calibration does not use (calibration: the first 32 of ``train/good``):

1. each target's whole backbone run by ONNX Runtime with its fused integer kernels and with exact
   Q/DQ rounding (``session.disable_quant_qdq``, what TensorRT computes);
2. layers left float (``--keep-float`` plans, prefixes of timm's node names);
3. calibration methods (percentile 99.99, min-max, entropy).
Findings and the figures of one run: docs/benchmarks.md section 4.3.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import adtr_edge.engine.quantize as quantize  # noqa: E402
from adtr_edge.engine import calibration as calib  # noqa: E402
from adtr_edge.engine import onnx_tools  # noqa: E402
from adtr_edge.fileio import write_json_atomic  # noqa: E402
from adtr_edge.folder import read_export  # noqa: E402
from benchmarks.int8_sensitivity import session, stage_channels  # noqa: E402

PLANS = {"nothing": [], "stem": ["/cnn/conv_stem/", "/cnn/bn1/"], "block 0": ["/cnn/blocks.0/"],
         "stem + block 0": ["/cnn/conv_stem/", "/cnn/bn1/", "/cnn/blocks.0/"], "auto (stem + blocks 0-1)": "auto",
         "every depthwise conv": ["conv_dw"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("export_dir")
    ap.add_argument("--data", required=True)
    ap.add_argument("--json")
    args = ap.parse_args()
    import onnx

    export = read_export(Path(args.export_dir), purpose="quantize")
    spec, stages = export.meta.preprocess, export.meta.raw["features"]["stages"]
    model = onnx_tools.load(export.graph_file("backbone"))
    del model.metadata_props[:]
    good = calib.calibration_images(Path(args.data) / "train" / "good", 64)
    batches = calib.backbone_batches(good[:32], spec, 8)
    x = calib.backbone_batches(good[48:64], spec, 16)[0]

    bounds = np.cumsum([0] + stage_channels(export.meta.raw))
    slices = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
    results: dict = {"command": " ".join(sys.argv), "images": len(x)}
    with tempfile.TemporaryDirectory(prefix="int8-rounding-") as tmp:
        src, dst = Path(tmp) / "bb.onnx", Path(tmp) / "q.onnx"
        onnx.save(model, str(src))
        ref = session(src, False).run(None, {"images": x})[0]

        def error(target: str, exact: bool, keep=(), method="Percentile") -> dict:
            quantize.quantize_graph(src, dst, quantize.TARGETS[target]["backbone"], onnx_tools.sensitive_nodes(model) + list(keep),
                                    quantize.calibration_reader("images", batches),
                                    calibration=dict(quantize.CALIBRATION, method=method), model=model)
            f = session(dst, exact).run(None, {"images": x})[0]
            return {"relative": round(float(np.linalg.norm(f - ref) / np.linalg.norm(ref)), 4),
                    "stages": [round(float(np.linalg.norm(f[:, s] - ref[:, s]) / np.linalg.norm(ref[:, s])), 4) for s in slices]}

        def show(section: str, key: str, r: dict) -> None:
            results.setdefault(section, {})[key] = r
            print(f"{section:12s} {key:44s} {r['relative']:.4f}  stages {r['stages']}", flush=True)

        for target in quantize.TARGETS:
            for exact in (False, True):
                show("rounding", f"{target}, {'exact Q/DQ' if exact else 'fused kernels'}", error(target, exact))
        for target in quantize.TARGETS:
            for name, plan in PLANS.items():
                keep = quantize.float_plan(model, "auto", stages, target) if plan == "auto" else \
                    [n.name for n in model.graph.node if any(p in n.name if p == "conv_dw" else n.name.startswith(p) for p in plan)]
                show("keep float", f"{target}: {name} ({len(keep)} nodes)", error(target, target == "tensorrt", keep))
        for target in quantize.TARGETS:
            for method in ("Percentile", "MinMax", "Entropy"):
                show("calibration", f"{target}: {method}", error(target, target == "tensorrt", method=method))
    if args.json:
        write_json_atomic(args.json, results)


if __name__ == "__main__":
    main()
