"""Two more INT8 rewrites of the `--target cpu` transformer, timed only (both were not shipped).

    python benchmarks/int8_attention.py FP32_FOLDER CPU_FOLDER --out DIR [--threads 1] [--rounds 20] [--iters 3]

1. **Attention in INT8.** ``quantize --target cpu`` quantises the transformer's MatMul/Gemm whose
   second input is a weight (ONNX Runtime's dynamic quantiser, ``MatMulConstBOnly``). Here the
   FP32 transformer is quantised the same way (same excluded nodes, the same INT8 head) but with
   ``MatMulConstBOnly`` off, so the attention products QK^T and attention x V, both of whose
   inputs are activations, become DynamicQuantizeLinear + MatMulInteger as well (``DIR/transformer-attn-int8.onnx``).
2. **The INT8 head with one 2-D weight per location.** ``int8_head`` writes one MatMulInteger by a
   (locations, C, C) weight; ONNX Runtime prepacks only 2-D constant weights. The same integers as
   one MatMulInteger per location (Split, 256 nodes, Concat), on random inputs of the head's shape.

ONNX Runtime, batch 1, ``--threads``, interleaved, median CPU and wall ms. docs/benchmarks.md 11.4.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from adtr_edge.bench import scripts
from adtr_edge.bench.timing import interleaved_wall_cpu
from adtr_edge.engine import onnx_tools
from adtr_edge.int8 import int8_head
from adtr_edge.int8.quantize import TARGETS, quantize_graph
from adtr_edge.metadata import TRANSFORMER


def attention_int8(fp32_graph: Path, dst: Path) -> Path:
    """The shipped CPU transformer's quantisation (``quantize_graph``, the same excluded nodes, the
    INT8 head), with ``MatMulConstBOnly`` off: activation x activation MatMuls in INT8 too."""
    settings = dict(TARGETS["cpu"][TRANSFORMER], extra_options={"MatMulConstBOnly": False})
    model = onnx.load(str(fp32_graph))
    quantize_graph(fp32_graph, dst, settings, onnx_tools.sensitive_nodes(model), None, model=model)
    q = onnx.load(str(dst))
    int8_head.quantize_whitening(q, settings["head_weight_bits"])
    onnx.save(q, str(dst))
    return dst


def head_graphs(locations: int, channels: int, seed: int = 0) -> tuple[onnx.ModelProto, onnx.ModelProto, np.ndarray]:
    """(one MatMulInteger by a 3-D weight, one per location by 2-D weights, an input)."""
    rng = np.random.default_rng(seed)
    w = rng.integers(-63, 64, (locations, channels, channels), dtype=np.int8)
    x = rng.integers(0, 256, (locations, 1, channels), dtype=np.uint8)
    zp = numpy_helper.from_array(np.array(128, np.uint8), "zp")
    inp = [helper.make_tensor_value_info("x", TensorProto.UINT8, [locations, 1, channels])]
    out = [helper.make_tensor_value_info("y", TensorProto.INT32, None)]

    def model(nodes, inits):
        m = helper.make_model(helper.make_graph(nodes, "head", inp, out, inits), opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        return m

    batched = model([helper.make_node("MatMulInteger", ["x", "w", "zp"], ["y"])], [numpy_helper.from_array(w, "w"), zp])
    nodes = [helper.make_node("Split", ["x", "split"], [f"x{i}" for i in range(locations)], axis=0)]
    inits = [zp, helper.make_tensor("split", TensorProto.INT64, [locations], [1] * locations)]
    for i in range(locations):
        inits.append(numpy_helper.from_array(w[i], f"w{i}"))
        nodes.append(helper.make_node("MatMulInteger", [f"x{i}", f"w{i}", "zp"], [f"y{i}"]))
    nodes.append(helper.make_node("Concat", [f"y{i}" for i in range(locations)], ["y"], axis=0))
    return batched, model(nodes, inits), x


def main(argv: list[str]) -> int:
    import onnxruntime as ort

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fp32")
    ap.add_argument("cpu")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--iters", type=int, default=3)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fp32, shipped = Path(args.fp32) / "transformer.onnx", Path(args.cpu) / "transformer.onnx"
    attn = attention_int8(fp32, out / "transformer-attn-int8.onnx")

    def call(model) -> callable:
        sess = scripts.ort_session(model, args.threads)
        feed = scripts.random_feed(sess)
        return lambda: sess.run(None, feed)

    whiten = next(i for i in onnx.load(str(fp32)).graph.initializer if i.name == "head.residual_whiten")
    batched, per_location, x = head_graphs(int(whiten.dims[0]), int(whiten.dims[1]))
    heads = {"head, one 3-D weight (shipped)": scripts.ort_session(batched, args.threads),
             "head, a 2-D weight per location": scripts.ort_session(per_location, args.threads)}
    same = np.array_equal(*(s.run(None, {"x": x})[0] for s in heads.values()))
    calls = {"transformer FP32": call(fp32), "transformer, shipped cpu form": call(shipped), "transformer, attention INT8 too": call(attn)}
    calls.update({name: (lambda s=s: s.run(None, {"x": x})) for name, s in heads.items()})
    wall, cpu = interleaved_wall_cpu(calls, args.rounds, args.iters, warmup=2)
    print(f"ONNX Runtime {ort.__version__}, {args.threads} thread(s), batch 1; the two head forms give identical integers: {same}")
    print("| graph | CPU ms | wall ms |\n|---|---|---|")
    for name in calls:
        print(f"| {name} | {np.median(cpu[name]):.2f} | {np.median(wall[name]):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
