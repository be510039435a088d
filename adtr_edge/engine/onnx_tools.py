"""ONNX-side facts the engine builder and the quantiser need: Q/DQ presence, precision-sensitive
nodes, FP16 conversion, and the keep-float plan (``float_plan``: the backbone layers ``--keep-float``
keeps out of INT8, pinned to FP16 by the builder, left float by ``int8.quantize``).

Sensitive nodes are those that overflow or lose too much in FP16/INT8: ``LayerNormalization``,
``Softmax``, the ops of a LayerNorm decomposed at opset < 17 (ReduceMean, Sub, Pow, ReduceMean,
Add, Sqrt, Div and the affine Mul/Add after it), and the whole error head: everything downstream
of ``features - reconstruction`` (whitening MatMul, square, sum, sqrt, resize, blur, pool, max), where
a strong anomaly's sum of squares would overflow FP16 and small whitened residuals would round away. The builder pins them to FP32 on 8.x-10.x; the
FP16 converter for TensorRT 11 (strongly typed) keeps them in FP32 with Casts around them.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import AdtrError
from ..metadata import TARGET_CPU, TARGET_TENSORRT

SENSITIVE_OPS = {"LayerNormalization", "Softmax"}
_LN_CHAIN_OPS = {"Pow", "Mul", "ReduceMean", "Add", "Sqrt", "Div"}


def load(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except Exception as e:  # onnx raises several types for bad files
        raise AdtrError(f"cannot read ONNX file {path}: {e}") from None


def has_qdq(model: onnx.ModelProto) -> bool:
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


# What ONNX Runtime's quantisers leave in a graph besides Q/DQ: the dynamic form and the QOperator form.
_INTEGER_OPS = {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "QLinearConv", "QLinearMatMul"}


def is_quantized(model: onnx.ModelProto) -> bool:
    """Static Q/DQ, dynamic or integer-operator INT8: quantising it again would stack the error."""
    return has_qdq(model) or any(n.op_type in _INTEGER_OPS for n in model.graph.node)


def _consumers(graph) -> dict[str, list]:
    out = defaultdict(list)
    for n in graph.node:
        for name in n.input:
            out[name].append(n)
    return out


def head_nodes(model: onnx.ModelProto) -> list:
    """The error head: the ``Sub`` that takes a graph input minus something, and all it feeds."""
    graph = model.graph
    inputs = {i.name for i in graph.input}
    consumers = _consumers(graph)
    frontier = [n for n in graph.node if n.op_type == "Sub" and len(n.input) == 2 and n.input[0] in inputs
                and n.input[1] not in inputs]
    seen: dict[int, object] = {}
    while frontier:
        node = frontier.pop()
        if id(node) in seen:
            continue
        seen[id(node)] = node
        for out in node.output:
            frontier.extend(consumers.get(out, []))
    return list(seen.values())


def sensitive_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of nodes to keep out of FP16/INT8 (see module doc), in graph order."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers = _consumers(graph)
    chosen: set[int] = {id(n) for n in head_nodes(model)}
    for n in graph.node:
        if n.op_type in SENSITIVE_OPS:
            chosen.add(id(n))
        # A decomposed LayerNorm starts with Sub(x, ReduceMean(x)).
        if n.op_type == "Sub" and len(n.input) == 2:
            mean = producer.get(n.input[1])
            if mean is None or mean.op_type != "ReduceMean" or mean.input[0] != n.input[0]:
                continue
            chain = _ln_chain(n, consumers)
            if chain:
                chosen.update(id(x) for x in chain)
                chosen.add(id(mean))
    return [n.name for n in graph.node if id(n) in chosen]


def _ln_chain(sub, consumers) -> list:
    """Nodes from the Sub to the Div that normalises by sqrt(var + eps), plus the affine Mul/Add."""
    chain, frontier, div = [sub], [sub], None
    for _ in range(8):  # the chain is at most six ops long; bound the walk
        nxt = []
        for node in frontier:
            for c in consumers.get(node.output[0], []):
                if c.op_type in _LN_CHAIN_OPS and c not in chain:
                    chain.append(c)
                    if c.op_type == "Div":
                        div = c
                    else:
                        nxt.append(c)
        frontier = nxt  # keep walking: the variance branch reaches the same Div later
        if not frontier:
            break
    if div is None:
        return []
    tail = div
    for op in ("Mul", "Add"):
        cs = consumers.get(tail.output[0], [])
        if len(cs) == 1 and cs[0].op_type == op:
            tail = cs[0]
            chain.append(tail)
    return chain


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor name (after shape inference on the original graph)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    g = inferred.graph
    types = {i.name: i.data_type for i in g.initializer}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        types[vi.name] = vi.type.tensor_type.elem_type
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    types[n.output[0]] = a.t.data_type
    return types


# -- FP16 conversion (TensorRT 11: strongly typed, precision lives in the graph) -----------------
_FLOAT = TensorProto.FLOAT
_HALF = TensorProto.FLOAT16


def convert_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy computing in float16, with sensitive nodes in float32 and I/O types unchanged.

    Float32 initializers and Constant tensors become float16, except those read only by sensitive
    nodes or by inputs that ONNX requires to be float32 (Resize scales). Casts to FLOAT become
    casts to FLOAT16. Each graph float32 input is cast to float16 on entry; each float32 output is
    cast back. Each sensitive node gets Cast-to-float32 on its float inputs and Cast-to-float16 on
    its outputs.
    """
    if has_qdq(model):
        raise AdtrError("FP16 conversion of a Q/DQ graph is not supported: build Q/DQ graphs as INT8")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    types = _elem_types(model)
    sensitive = set(sensitive_nodes(m))
    stays32 = _float32_keeper(g, sensitive)
    _halve_constants(g, stays32)
    nodes, fp32_of = _cast_inputs_and_sensitive_nodes(g, sensitive, types, stays32)
    _cast_outputs_back(g, nodes, fp32_of)
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]  # stale float32 annotations; shape inference re-derives them
    try:
        m = onnx.shape_inference.infer_shapes(m, strict_mode=False)
        onnx.checker.check_model(m)
    except Exception as e:
        raise AdtrError(f"FP16 conversion produced an invalid graph: {e}") from None
    return m


def _float32_keeper(g, sensitive: set):
    """Which float32 tensors stay float32: read only by sensitive nodes or as Resize scales."""
    keep32 = set()  # tensor names that must stay float32
    for n in g.node:
        if n.name in sensitive:
            keep32.update(i for i in n.input if i)
        if n.op_type == "Resize" and len(n.input) > 2 and n.input[2]:
            keep32.add(n.input[2])
    consumers = _consumers(g)

    def stays32(name: str) -> bool:
        users = consumers.get(name, [])
        return name in keep32 and all(u.name in sensitive or u.op_type == "Resize" for u in users)

    return stays32


def _halve_constants(g, stays32) -> None:
    """Initializers, Constant and ConstantOfShape values to float16; Casts to FLOAT become FLOAT16."""
    for init in g.initializer:
        if init.data_type == _FLOAT and not stays32(init.name):
            arr = numpy_helper.to_array(init).astype(np.float16)
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
    for n in g.node:
        if n.op_type == "Constant" and not stays32(n.output[0]):
            for a in n.attribute:
                if a.name == "value" and a.t.data_type == _FLOAT:
                    a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16), a.t.name))
        if n.op_type == "Cast":
            for a in n.attribute:
                if a.name == "to" and a.i == _FLOAT:
                    a.i = _HALF
        if n.op_type == "ConstantOfShape":
            for a in n.attribute:
                if a.name == "value" and a.t.data_type == _FLOAT:
                    a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16), a.t.name))


def _cast_inputs_and_sensitive_nodes(g, sensitive: set, types: dict, stays32) -> tuple[list, dict]:
    """The new node list: float32 graph inputs cast to float16 on entry, and each sensitive node
    wrapped in Casts (float32 in, float16 out), except between two sensitive nodes, which pass
    float32 directly; and the float32 name of every sensitive node's output."""
    new_nodes = []
    renamed = {}
    for inp in g.input:
        if inp.type.tensor_type.elem_type == _FLOAT:
            inner = f"{inp.name}__fp16"
            renamed[inp.name] = inner
            new_nodes.append(helper.make_node("Cast", [inp.name], [inner], to=_HALF, name=f"{inp.name}__to_fp16"))
    init_names = {i.name for i in g.initializer}
    fp32_of: dict[str, str] = {}  # output of a sensitive node -> its float32 name
    for n in g.node:
        if n.name not in sensitive:  # a float32 node reads the float32 graph input itself
            for k, name in enumerate(n.input):
                if name in renamed:
                    n.input[k] = renamed[name]
        if n.name in sensitive:
            for k, name in enumerate(n.input):
                if name in fp32_of:  # from another float32 node: no round trip through float16
                    n.input[k] = fp32_of[name]
                    continue
                if not name or types.get(name) != _FLOAT or (name in init_names and stays32(name)) or name in renamed:
                    continue  # integer inputs (axes, shapes), float32-kept weights and graph inputs need no cast
                cast_out = f"{name}__fp32_for_{n.name}"
                new_nodes.append(helper.make_node("Cast", [name], [cast_out], to=_FLOAT, name=f"{cast_out}__cast"))
                n.input[k] = cast_out
            new_nodes.append(n)
            for k, name in enumerate(list(n.output)):
                if not name or types.get(name) != _FLOAT:
                    continue
                inner = f"{name}__fp32"
                n.output[k] = inner
                fp32_of[name] = inner
                new_nodes.append(helper.make_node("Cast", [inner], [name], to=_HALF, name=f"{name}__to_fp16"))
            continue
        new_nodes.append(n)
    return new_nodes, fp32_of


def _cast_outputs_back(g, new_nodes: list, fp32_of: dict) -> None:
    """Graph outputs: those made in float32 (the head) leave as they are; the others are float16
    inside and cast back to float32 (a node appended to ``new_nodes`` per output)."""
    out_names = {o.name for o in g.output if o.type.tensor_type.elem_type == _FLOAT}
    for name in out_names & set(fp32_of):
        half = f"{name}__fp16"
        for n in new_nodes:
            n.output[:] = [half if o == name else o for o in n.output]
            n.input[:] = [half if i == name else i for i in n.input]
        new_nodes.append(helper.make_node("Identity", [fp32_of[name]], [name], name=f"{name}__fp32_out"))
    for name in out_names - set(fp32_of):
        inner = f"{name}__fp16out"
        for n in new_nodes:
            for k, o in enumerate(n.output):
                if o == name:
                    n.output[k] = inner
            for k, i in enumerate(n.input):
                if i == name:
                    n.input[k] = inner
        new_nodes.append(helper.make_node("Cast", [inner], [name], to=_FLOAT, name=f"{name}__to_fp32"))


def auto_float_modules(stages: Sequence[int], target: str = TARGET_TENSORRT) -> list[str]:
    """The CNN modules ``--keep-float auto`` keeps float, by timm's names (none without stages).

    ``tensorrt``: the stem and every block up to and including the first feature stage.
    ``cpu``: the stem and the blocks before the first feature stage; that stage's block runs in
    INT8. Chosen on magnetic tile's validation split (docs/benchmarks.md section 11.8): for the
    CPU form that block costs 0.2 pixel points and is what takes the frame past 1.5x FP32 on a
    VNNI CPU. TensorRT keeps it float: there it costs 0.4 pixel points on the same split, for a
    GPU speed-up that cannot be measured here.
    """
    if not stages:
        return []
    if target not in (TARGET_TENSORRT, TARGET_CPU):
        raise AdtrError(f"--target {target!r}: choose one of {TARGET_TENSORRT}, {TARGET_CPU}")
    last = min(stages) + (1 if target == TARGET_TENSORRT else 0)
    return ["conv_stem", "bn1"] + [f"blocks.{i}" for i in range(last)]


def float_plan(model, spec: str, stages: Sequence[int], target: str = TARGET_TENSORRT) -> list[str]:
    """Backbone nodes to keep out of INT8 (mixed precision), from ``--keep-float``.

    ``auto``: the high-resolution layers of ``auto_float_modules`` for ``target``, where the
    per-layer sensitivity study (docs/benchmarks.md section 4.3, docs/decisions.md) finds most of INT8's
    feature error: one rounding there is carried by every later layer into all three feature
    stages. Found by timm's node names (``/cnn/conv_stem``, ``/cnn/bn1``, ``/cnn/blocks.N/``); a
    backbone named otherwise gets none. ``none``: nothing. Otherwise comma-separated node-name
    prefixes.
    """
    spec = (spec or "none").strip()
    if spec == "none":
        return []
    if spec == "auto":
        prefixes = [f"/cnn/{m}/" for m in auto_float_modules(stages, target)]  # the exporter's node names under those modules
    else:
        prefixes = [p.strip() for p in spec.split(",") if p.strip()]
    nodes = [n.name for n in model.graph.node if any(n.name.startswith(p) for p in prefixes)]
    if spec != "auto" and prefixes and not nodes:
        raise AdtrError(f"--keep-float {spec!r}: no backbone node name starts with it (see 'adtr-edge inspect')")
    return nodes
