"""ONNX Runtime vs PyTorch parity of the exported graphs, graph sizes and operator histograms.

    python benchmarks/parity.py CHECKPOINT --images DIR [--out runs/parity]

Exports the checkpoint at opsets 16 and 17, runs the same real images (batch 1 and 8) through the
PyTorch modules and both ONNX graphs, and reports max abs / max relative differences of the
features, anomaly map and score. Prints Markdown.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from adtr_edge.export.onnx_export import export_checkpoint
from adtr_edge.preprocessing import list_images, prepare_batch, preprocess_spec, read_image
from adtr_edge.train.checkpoint import load_checkpoint


def diff(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Max abs difference, and that relative to the reference's largest magnitude (element-wise
    relative error is meaningless for standardised features that cross zero)."""
    abs_d = float(np.abs(a - b).max())
    return abs_d, abs_d / max(float(np.abs(b).max()), 1e-12)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--images", required=True)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    model, ckpt = load_checkpoint(args.checkpoint)
    spec = preprocess_spec(ckpt.model_config)
    files = list_images(args.images)[:8]
    batch8 = prepare_batch([read_image(f) for f in files], spec)
    out = Path(args.out or tempfile.mkdtemp(prefix="parity-"))
    print(f"command: {' '.join(sys.argv)}\n")
    print("rel = max abs difference / max |PyTorch value|\n")
    print("| opset | batch | features max abs / rel | anomaly map max abs / rel | score max abs / rel |")
    print("|---|---|---|---|---|")
    hist = {}
    for opset in (17, 16):
        folder = out / f"opset{opset}"
        export_checkpoint(args.checkpoint, folder, opset=opset, force=True)
        bb = ort.InferenceSession(str(folder / "backbone.onnx"), providers=["CPUExecutionProvider"])
        tr = ort.InferenceSession(str(folder / "transformer.onnx"), providers=["CPUExecutionProvider"])
        for n in (1, 8):
            x = batch8[:n]
            f = bb.run(None, {"images": x})[0]
            amap, score = tr.run(None, {"features": f})
            with torch.no_grad():
                tf = model.backbone(torch.from_numpy(x)).numpy()
                tmap, tscore = (t.numpy() for t in model(torch.from_numpy(x)))
            cells = [diff(f, tf), diff(amap, tmap), diff(score, tscore)]
            print(f"| {opset} | {n} | " + " | ".join(f"{a:.2e} / {r:.2e}" for a, r in cells) + " |")
        for g in ("backbone", "transformer"):
            proto = onnx.load(str(folder / f"{g}.onnx"))
            hist[(opset, g)] = ((folder / f"{g}.onnx").stat().st_size, Counter(nd.op_type for nd in proto.graph.node))
    print()
    for (opset, g), (size, ops) in hist.items():
        top = ", ".join(f"{k} {v}" for k, v in ops.most_common())
        print(f"- opset {opset} `{g}.onnx`: {size / 1e6:.2f} MB, {sum(ops.values())} nodes: {top}")


if __name__ == "__main__":
    main()
