"""What the score head costs per frame, per-location against nearest-neighbour for several bank sizes.

    python benchmarks/nearest_cost.py --banks 1024,4096,16384 --json runs/nearest-cost.json

Each head is exported alone (features and reconstruction in, anomaly map and score out) with the
default preset's shapes (Lite2 stages 1-3: 192 channels, a 16x16 grid, 256 px maps) and timed on ONNX
Runtime's CPU provider, interleaved (one round of every head, then the next round), batch 1. The
bank's memory is its float32 size in the graph (half that in an FP16 engine). FP16 safety: the head
is run in float16 and float32 on the same standardised features (normal cells and a cell pushed 8
standard deviations out) and the largest relative difference of the maps is reported.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from adtr_edge.config import ModelConfig
from adtr_edge.model.head import AnomalyHead
from adtr_edge.train.location_choice import nearest_config

CHANNELS = 192


def session(head: AnomalyHead, threads: int) -> ort.InferenceSession:
    f = torch.randn(1, CHANNELS, 16, 16)
    buf = io.BytesIO()
    torch.onnx.export(head, (f, f), buf, input_names=["features", "reconstruction"], output_names=["anomaly_map", "score"],
                      opset_version=17, dynamo=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])


def fp16_error(head: AnomalyHead) -> float:
    g = torch.Generator().manual_seed(1)
    f = torch.randn(4, CHANNELS, 16, 16, generator=g)
    f[:, :, 5, 5] += 8.0
    rec = f * 0.5
    with torch.no_grad():
        full = head(f, rec)[0]
        half = head.half()(f.half(), rec.half())[0].float()
    head.float()
    return float(((half - full).abs().max() / full.abs().max()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--banks", default="1024,4096,16384")
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    base = ModelConfig.for_backbone("tf_efficientnet_lite2", score="mahalanobis", region_grid=4)
    heads = {"per-location (default, with the 4x4 regional term)": AnomalyHead(base, CHANNELS)}
    for bank in [int(b) for b in args.banks.split(",")]:
        head = AnomalyHead(nearest_config(replace(base), bank), CHANNELS)
        head.set_bank(torch.randn(bank, CHANNELS))
        heads[f"nearest, bank {bank}"] = head
    sessions = {k: session(h, args.threads) for k, h in heads.items()}
    feed = {"features": np.random.randn(1, CHANNELS, 16, 16).astype(np.float32)}
    feed["reconstruction"] = feed["features"] * 0.5
    times = {k: [] for k in sessions}
    # a head on the features alone has no reconstruction input (the exporter drops what no output reads)
    feeds = {k: {i.name: feed[i.name] for i in s.get_inputs()} for k, s in sessions.items()}
    for _ in range(10):
        for k, s in sessions.items():
            s.run(None, feeds[k])
    for _ in range(args.rounds):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feeds[k])
            times[k].append(time.perf_counter() - t0)
    rows = []
    for k, h in heads.items():
        bank = getattr(h, "bank", None)
        rows.append({"head": k, "median_ms": round(1000 * float(np.median(times[k])), 3),
                     "p90_ms": round(1000 * float(np.percentile(times[k], 90)), 3),
                     "bank_mib_fp32": round(bank.numel() * 4 / 2 ** 20, 2) if bank is not None else None,
                     "fp16_max_rel_error": round(fp16_error(h), 5)})
        print(" | ".join(str(v) for v in rows[-1].values()), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "rounds": args.rounds, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
