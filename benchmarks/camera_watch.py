"""What the stream's camera watch (``adtr_edge.frame_quality``) sees on a dataset, and what it costs.

    python benchmarks/camera_watch.py --data ../shared/data/magnetic_tile --size 256

The normals' ranges come from the training split's normal images (as ``train`` records them); then
the test split's normal images stream through one watch per condition, each perturbed as
``eval --perturb`` perturbs them (``adtr_edge.evaluation.robustness.PERTURBATIONS``), and the events
the watch would send are listed. Last, the wall time of one frame's measures (the median of
``--rounds`` passes over the first 100 normals), beside nothing else: the stream pays it per frame
on its sink thread, beside the inference loop.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from adtr_edge.data.datasets import load_dataset
from adtr_edge.evaluation.robustness import conditions
from adtr_edge.frame_quality import QualityWatch, measure, normal_ranges


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="dataset folder (MVTec layout)")
    ap.add_argument("--size", type=int, default=256, help="the model's input side (px)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    size = (args.size, args.size)
    train, test = load_dataset(args.data, "train"), load_dataset(args.data, "test")
    ranges = normal_ranges((train.image(i) for i in range(len(train)) if train.labels[i] == 0), size)
    goods = [test.image(i) for i in range(len(test)) if test.labels[i] == 0]
    print(f"normals' ranges ({ranges['images']} training normals): mean grey {ranges['grey']}, sharpness {ranges['sharpness']}")
    rows = []
    for label, p, strength in conditions():
        watch, events = QualityWatch(ranges), []
        for i, im in enumerate(goods):
            events += [(i, kind, key) for kind, key, _ in watch.update(im if p is None else p.image(im, strength))]
        rows.append({"condition": label, "events": events})
        print(f"{label:28s} {', '.join(f'{k} {m} at frame {i}' for i, k, m in events) or 'nothing'}")
    passes = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        for im in goods[:100]:
            measure(im, size)
        passes.append((time.perf_counter() - t) / len(goods[:100]) * 1e3)
    cost = float(np.median(passes))
    print(f"cost: {cost:.3f} ms per frame ({goods[0].shape[1]}x{goods[0].shape[0]} px frames, measured at {args.size} px)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ranges": ranges, "conditions": rows, "ms_per_frame": cost, "normal_images": len(goods)}, f, indent=1)


if __name__ == "__main__":
    main()
