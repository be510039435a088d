"""Does fitting the Mahalanobis head on the INT8 backbone's features win back what INT8 loses?

    python benchmarks/int8_matched_head.py runs/mt-default/adtr-default-id05 \
        --qdq runs/deploy-mt/onnx-int8-backbone --data ../shared/data/magnetic_tile --out runs/int8-matched

Features of the training normals and of the test set come from the Q/DQ backbone (ONNX Runtime,
CPU); the transformer is the FP32 one. Rows: the head fitted on FP32 features (what an INT8
deployment gets today), and the head refitted on the INT8 features of the same training images
(quantisation-matched statistics, issue #11 item 4, without retraining the transformer).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adtr_edge.data.datasets import load_batch, load_dataset  # noqa: E402
from adtr_edge.evaluate import Scored, report_for  # noqa: E402
from adtr_edge.fileio import write_json_atomic  # noqa: E402
from adtr_edge.preprocessing import preprocess_spec  # noqa: E402
from adtr_edge.train.checkpoint import load_checkpoint  # noqa: E402
from adtr_edge.train.loop import score_features, split_normals  # noqa: E402
from adtr_edge.train.residual_stats import fit_head  # noqa: E402


def onnx_features(session, imageset, indices, spec, batch: int = 16):
    feats, masks = [], []
    for s in range(0, len(indices), batch):
        images, m = load_batch(imageset, indices[s:s + batch], spec)
        feats.append(session.run(None, {"images": images})[0])
        masks.append(m)
    return torch.from_numpy(np.concatenate(feats)), np.concatenate(masks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--qdq", required=True, help="folder with the Q/DQ backbone.onnx")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    model, ckpt = load_checkpoint(args.checkpoint)
    spec = preprocess_spec(ckpt.model_config)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    int8 = ort.InferenceSession(str(Path(args.qdq) / "backbone.onnx"), opts, providers=["CPUExecutionProvider"])
    train_set, test = load_dataset(args.data, "train"), load_dataset(args.data, "test")
    fit_idx, _ = split_normals(train_set, ckpt.train_config)
    cpu = torch.device("cpu")
    fit8, _ = onnx_features(int8, train_set, fit_idx, spec)
    test8, masks = onnx_features(int8, test, list(range(len(test))), spec)
    labels = np.asarray(test.labels)

    def row(name):
        scores, maps = score_features(model, test8, cpu)
        rep = report_for(Scored(scores, maps, masks, labels, list(test.defects), []), None)
        print(json.dumps({"form": name, **{k: rep[k] for k in ("image_auroc", "pixel_auroc", "aupro")}}), flush=True)
        return {"form": name, **{k: rep[k] for k in ("image_auroc", "pixel_auroc", "aupro")}}

    rows = [row("INT8 backbone, head fitted on FP32 features (today)")]
    tcfg = ckpt.train_config
    fit_head(model, fit8, cpu, tcfg.score_shrinkage, tcfg.score_target)
    rows.append(row("INT8 backbone, head refitted on INT8 features of the same training images"))
    write_json_atomic(Path(args.out) / "int8_matched_head.json", {"command": " ".join(sys.argv), "rows": rows})


if __name__ == "__main__":
    main()
