"""Where ONNX Runtime spends a graph's time: per op type and per node, batch 1, one thread.

    python benchmarks/ort_profile.py GRAPH.onnx [--runs 20] [--top 10] [--group NAME_PREFIX ...]

Uses ONNX Runtime's own profiler (``SessionOptions.enable_profiling``) on random input of the
graph's input shape (uint8 images for a backbone, float features for a transformer). Profiling
adds its own overhead: read the shares, not the absolute milliseconds. docs/benchmarks.md
section 4.3 quotes it for the FP32 and INT8 transformer and backbone. ``--group`` sums the nodes whose
names start with each prefix (section 11.4: the backbone's high-resolution layers).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile

from adtr_edge.bench import scripts


def main() -> None:
    import onnxruntime as ort

    ap = argparse.ArgumentParser()
    ap.add_argument("graph")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--group", action="append", default=[], help="node-name prefix to sum (repeatable)")
    args = ap.parse_args()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(tempfile.mkdtemp(prefix="ort-profile-"), "profile")
    sess = ort.InferenceSession(args.graph, opts, providers=["CPUExecutionProvider"])
    feed = scripts.random_feed(sess)
    for _ in range(args.runs):
        sess.run(None, feed)
    with open(sess.end_profiling()) as f:
        events = json.load(f)
    by_op, by_node = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"]
            by_node[e["name"][: -len("_kernel_time")]] += e["dur"]
    total = sum(by_op.values()) or 1
    print(f"{args.graph}: {total / args.runs / 1e3:.2f} ms of kernels per run ({args.runs} runs, 1 thread)")
    for op, us in by_op.most_common(args.top):
        print(f"  {op:28s} {us / args.runs / 1e3:7.2f} ms  {100 * us / total:5.1f}%")
    for prefix in args.group:
        us = sum(v for k, v in by_node.items() if k.startswith(prefix))
        print(f"  nodes named {prefix}*: {us / args.runs / 1e3:.2f} ms  {100 * us / total:.1f}%")
    print("  top nodes:")
    for node, us in by_node.most_common(args.top):
        print(f"    {node[-60:]:60s} {us / args.runs / 1e3:7.2f} ms")


if __name__ == "__main__":
    main()
