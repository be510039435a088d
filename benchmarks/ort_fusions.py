"""Attention fusions on our transformer graphs: ONNX Runtime's optimizer and ``adtr_edge.engine.attention_fusion``.

    python benchmarks/ort_fusions.py TRANSFORMER.onnx [TRANSFORMER.onnx ...] --out DIR [--threads 1] [--rounds 20] [--iters 3]

Each graph (an FP32 export's or a ``--target cpu`` folder's ``transformer.onnx``) goes through the
optimizer as a BERT-like model (``model_type="bert"``, heads and width detected, its own
ONNX Runtime optimisation off so only the optimizer's fusions are counted). Prints the fused
operators it found and the op-type counts that changed, checks the outputs agree with the graph
it came from, then times both on one random feature map, batch 1, interleaved (wall and CPU time,
medians). ONNX Runtime's session optimisations (on by default) run on both, so a gain here is
what the offline fusions add on top of them.

Each graph also goes through ``attention_fusion.fuse_attention`` (what ``quantize --target cpu``
now does; give a graph written with ``--no-fuse-attention`` to see its gain), timed in the same rounds.

The optimizer finds no attention in these graphs (the neighbour mask is an Add of a constant
between the scaled QK^T and the Softmax). What fusing it could give at most is measured on one
attention block alone (``--attention TOKENS,WIDTH,HEADS``, default the default model's 256,128,8):
the exported op sequence (Reshape/Transpose, MatMul, Mul, Add mask, Softmax, MatMul) against ONNX
Runtime's fused ``com.microsoft.MultiHeadAttention`` with the mask as its attention bias.
Figures: docs/benchmarks.md section 11.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _models  # noqa: E402  (puts the repository on sys.path)

import numpy as np  # noqa: E402
import onnx  # noqa: E402

from adtr_edge.bench.timing import interleaved_wall_cpu  # noqa: E402
from adtr_edge.engine import attention_fusion  # noqa: E402


def attention_block(tokens: int, width: int, heads: int, threads: int, rounds: int, iters: int) -> dict:
    """One masked attention block as exported vs as one MultiHeadAttention node (CPU ms, medians)."""
    from onnx import TensorProto as T, helper as h, numpy_helper as nh

    rng = np.random.default_rng(0)
    mask = np.where(rng.random((tokens, tokens)) < 0.03, -10000.0, 0.0).astype(np.float32)  # as the neighbour mask

    def vi(name):
        return h.make_tensor_value_info(name, T.FLOAT, [1, tokens, width])

    split = nh.from_array(np.array([1, tokens, heads, width // heads], np.int64), "split")
    merge = nh.from_array(np.array([1, tokens, width], np.int64), "merge")
    scale = 1.0 / float(np.sqrt(width // heads))
    nodes = [h.make_node("Reshape", [x, "split"], [x + "1"]) for x in "qkv"]
    nodes += [h.make_node("Transpose", ["q1"], ["q2"], perm=[0, 2, 1, 3]), h.make_node("Transpose", ["k1"], ["k2"], perm=[0, 2, 3, 1]),
              h.make_node("Transpose", ["v1"], ["v2"], perm=[0, 2, 1, 3]), h.make_node("MatMul", ["q2", "k2"], ["s"]),
              h.make_node("Mul", ["s", "scale"], ["s2"]), h.make_node("Add", ["s2", "mask"], ["s3"]),
              h.make_node("Softmax", ["s3"], ["p"], axis=-1), h.make_node("MatMul", ["p", "v2"], ["o"]),
              h.make_node("Transpose", ["o"], ["o2"], perm=[0, 2, 1, 3]), h.make_node("Reshape", ["o2", "merge"], ["y"])]
    exported = h.make_model(h.make_graph(nodes, "exported", [vi("q"), vi("k"), vi("v")], [vi("y")],
                                         [split, merge, nh.from_array(mask, "mask"), nh.from_array(np.array(scale, np.float32), "scale")]),
                            opset_imports=[h.make_opsetid("", 17)])
    mha = h.make_node("MultiHeadAttention", ["q", "k", "v", "", "", "bias"], ["y"], domain="com.microsoft", num_heads=heads, scale=scale)
    fused = h.make_model(h.make_graph([mha], "fused", [vi("q"), vi("k"), vi("v")], [vi("y")], [nh.from_array(mask[None, None], "bias")]),
                         opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.microsoft", 1)])
    sessions = {k: _models.ort_session(m, threads) for k, m in (("exported", exported), ("MultiHeadAttention", fused))}
    feed = {x: rng.standard_normal((1, tokens, width)).astype(np.float32) for x in "qkv"}
    a, b = (s.run(None, feed)[0] for s in sessions.values())
    _, cpu = interleaved_wall_cpu({k: (lambda s=s: s.run(None, feed)) for k, s in sessions.items()}, rounds, iters * 5, warmup=0)
    return {"rel": float(np.linalg.norm(a - b) / np.linalg.norm(a)), **{k + "_cpu_ms": float(np.median(v)) for k, v in cpu.items()}}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("graphs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--attention", default="256,128,8", help="TOKENS,WIDTH,HEADS of the one-block comparison")
    _models.add_common_args(ap)
    args, threads = _models.parse_and_start(ap, argv)
    from onnxruntime.transformers.optimizer import optimize_model

    args.out.mkdir(parents=True, exist_ok=True)
    sessions, results = {}, {"command": " ".join(["python", *argv]), "threads": threads, "graphs": {}}
    for i, path in enumerate(args.graphs):
        label = f"{path.parent.name}/{path.name}"
        fused_path = args.out / f"{i}-{path.parent.name}-fused.onnx"
        opt = optimize_model(str(path), model_type="bert", num_heads=0, hidden_size=0, opt_level=0, use_gpu=False)
        stats = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
        opt.save_model_to_file(str(fused_path))
        before = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
        after = collections.Counter(n.op_type for n in onnx.load(str(fused_path)).graph.node)
        changed = {k: [before.get(k, 0), after.get(k, 0)] for k in sorted(set(before) | set(after)) if before.get(k, 0) != after.get(k, 0)}
        print(f"{label}: fused {stats or 'nothing'}; op counts changed (before, after): {changed}", flush=True)
        ours_path = args.out / f"{i}-{path.parent.name}-attention-fusion.onnx"
        ours = onnx.load(str(path))
        blocks = attention_fusion.fuse_attention(ours)
        onnx.save(ours, str(ours_path))
        print(f"{label}: attention_fusion fused {blocks} blocks", flush=True)
        sessions[label] = _models.ort_session(path, threads)
        sessions[label + " fused"] = _models.ort_session(fused_path, threads)
        sessions[label + " ours"] = _models.ort_session(ours_path, threads)
        results["graphs"][label] = {"fused": stats, "changed_ops": changed, "attention_fusion_blocks": blocks}

    feats = np.random.default_rng(0).standard_normal(
        [1] + [d.dim_value for d in onnx.load(str(args.graphs[0])).graph.input[0].type.tensor_type.shape.dim[1:]]).astype(np.float32)
    outs = {k: s.run(None, {"features": feats}) for k, s in sessions.items()}
    for label in results["graphs"]:
        a = outs[label][0]
        for key, suffix in (("map_rel", " fused"), ("ours_map_rel", " ours")):
            results["graphs"][label][key] = float(np.linalg.norm(a - outs[label + suffix][0]) / np.linalg.norm(a))
    wall, cpu = interleaved_wall_cpu({k: (lambda s=s: s.run(None, {"features": feats})) for k, s in sessions.items()},
                                     args.rounds, args.iters, warmup=0)
    print("\n| graph | ms wall (CPU), as given | ORT optimizer: ms, speed (wall / CPU), map rel. error | attention_fusion: ms, speed, error |"
          "\n|---|---|---|---|")
    for label, row in results["graphs"].items():
        w0, c0, w1, c1, w2, c2 = (float(np.median(x)) for x in (wall[label], cpu[label], wall[label + " fused"], cpu[label + " fused"],
                                                                  wall[label + " ours"], cpu[label + " ours"]))
        row.update(wall_ms=w0, cpu_ms=c0, fused_wall_ms=w1, fused_cpu_ms=c1, ours_wall_ms=w2, ours_cpu_ms=c2)
        print(f"| {label} | {w0:.2f} ({c0:.2f}) | {w1:.2f} ({c1:.2f}), {w0 / w1:.2f}x / {c0 / c1:.2f}x, {row['map_rel']:.1e} "
              f"| {w2:.2f} ({c2:.2f}), {w0 / w2:.2f}x / {c0 / c2:.2f}x, {row['ours_map_rel']:.1e} |")
    tokens, width, heads = (int(x) for x in args.attention.split(","))
    block = results["attention_block"] = attention_block(tokens, width, heads, threads, args.rounds, args.iters)
    print(f"\none attention block ({tokens} tokens, width {width}, {heads} heads), CPU ms: exported {block['exported_cpu_ms']:.2f}, "
          f"MultiHeadAttention {block['MultiHeadAttention_cpu_ms']:.2f} ({block['exported_cpu_ms'] / block['MultiHeadAttention_cpu_ms']:.2f}x; "
          f"outputs agree to {block['rel']:.1e})")
    return _models.finish(args, results)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
