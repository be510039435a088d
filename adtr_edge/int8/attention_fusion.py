"""The transformer's attention blocks as ONNX Runtime's fused ``com.microsoft.MultiHeadAttention``,
for the ``--target cpu`` form.

The export writes attention as plain ops, the simplest graph for TensorRT and every other runtime:

    q4 --Transpose(0,2,1,3)--+
                             MatMul --Mul(scale)--[Add(mask)]--Softmax--+
    k4 --Transpose(0,2,3,1)--+                                           MatMul --Transpose(0,2,1,3)--Reshape--> y (N, K, D)
    v4 --Transpose(0,2,1,3)-----------------------------------------------+

where q4, k4, v4 are the projections split into heads, (N, K, heads, width / heads). ONNX Runtime's
own optimiser does not recognise it (the neighbour mask is an Add of a constant between the scaled
product and the Softmax, docs section 11.3), so on the CPU every block materialises the
(N, heads, K, K) logits three times and runs four transposes. This module replaces each matched
block by one ``MultiHeadAttention`` node that reads the projections as (N, K, D) (a Reshape of q4,
k4, v4: about 0.1 ms per frame for all 18 on the default model) with the mask as its ``attention_bias``. The
output is the same function (softmax(q k^T * scale + mask) v), so accuracy does not move; only
ONNX Runtime runs the result, and ``build-engine`` already refuses the CPU form.

A block that does not match the pattern exactly (another layout, a scale that is not a scalar, a
non-constant mask, a tensor used elsewhere) is left as it is: the rewrite never guesses.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from ..engine import onnx_tools

DOMAIN = "com.microsoft"
OP = "MultiHeadAttention"
SUFFIX = "/fused_mha"  # the fused node is "<softmax name>/fused_mha"
_HEADS = [0, 2, 1, 3]  # (N, K, h, dh) -> (N, h, K, dh), and back
_KEYS = [0, 2, 3, 1]  # (N, K, h, dh) -> (N, h, dh, K)


def count_fused(model: onnx.ModelProto) -> int:
    return sum(n.domain == DOMAIN and n.op_type == OP for n in model.graph.node)


def _attr(node, name: str):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


class _Graph:
    """Producer / consumer lookups and constant values over one graph."""

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers = onnx_tools._consumers(g)
        self.outputs = {o.name for o in g.output}
        self.inits = {i.name: i for i in g.initializer}
        inferred = shape_inference.infer_shapes(model, data_prop=True)  # data_prop: Reshape targets built from Shape
        self.shapes = {}
        for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
            dims = vi.type.tensor_type.shape.dim
            self.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]

    def only_consumer(self, name: str):
        cs = self.consumers.get(name, [])
        return cs[0] if len(cs) == 1 and name not in self.outputs else None

    def made_by(self, name: str, op: str):
        n = self.producer.get(name)
        return n if n is not None and n.op_type == op else None

    def constant(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        n = self.producer.get(name)
        if n is not None and n.op_type == "Constant" and _attr(n, "value") is not None:
            return numpy_helper.to_array(_attr(n, "value"))
        return None


def _transposed(g: _Graph, name: str, perm: list[int]):
    """The (N, K, h, dh) tensor that ``name`` is a ``perm`` transpose of, if only this block uses it."""
    t = g.made_by(name, "Transpose")
    if t is None or list(_attr(t, "perm") or []) != perm or g.only_consumer(t.output[0]) is None:
        return None
    return t


def _match(g: _Graph, softmax) -> dict | None:
    axis = _attr(softmax, "axis")
    if axis not in (None, -1, 3):  # None: the default, the last axis since opset 13
        return None
    mask, pre = None, g.producer.get(softmax.input[0])
    if pre is not None and pre.op_type == "Add" and g.only_consumer(pre.output[0]) is softmax:
        for i in (0, 1):
            value = g.constant(pre.input[1 - i])
            if value is not None and g.producer.get(pre.input[i]) is not None:
                mask, pre = value, g.producer[pre.input[i]]
                break
        else:
            return None
    if pre is None or pre.op_type != "Mul" or g.only_consumer(pre.output[0]) is None:
        return None
    values = [g.constant(x) for x in pre.input]
    scale = next((v for v in values if v is not None), None)
    logits = next((g.producer.get(x) for x, v in zip(pre.input, values) if v is None), None)
    if scale is None or scale.dtype != np.float32 or scale.size != 1 or logits is None or logits.op_type != "MatMul" or g.only_consumer(logits.output[0]) is None:
        return None
    tq, tk = _transposed(g, logits.input[0], _HEADS), _transposed(g, logits.input[1], _KEYS)
    av = g.only_consumer(softmax.output[0])
    if tq is None or tk is None or av is None or av.op_type != "MatMul" or av.input[0] != softmax.output[0]:
        return None
    tv = _transposed(g, av.input[1], _HEADS)
    back = g.only_consumer(av.output[0])
    if tv is None or back is None or back.op_type != "Transpose" or list(_attr(back, "perm") or []) != _HEADS:
        return None
    # The merge Reshape, and with a symbolic batch the Shape that computes its target (dead once fused).
    users = g.consumers.get(back.output[0], [])
    merges = [n for n in users if n.op_type == "Reshape" and n.input[0] == back.output[0]]
    if back.output[0] in g.outputs or len(merges) != 1 or any(n.op_type not in ("Reshape", "Shape") for n in users):
        return None
    merge = merges[0]
    shapes = [g.shapes.get(t.input[0]) for t in (tq, tk, tv)]
    if any(s is None or len(s) != 4 or s[2] is None or s[3] is None for s in shapes) or len({(s[2], s[3]) for s in shapes}) != 1:
        return None
    heads, width = shapes[0][2], shapes[0][3]
    if mask is not None:
        # float32 only: the fused node's bias must have the graph's type, and the CPU form is float32
        if mask.dtype != np.float32 or mask.ndim > 4 or not np.all(np.isfinite(mask)):
            return None
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
        if mask.shape[0] != 1 or mask.shape[1] not in (1, heads):  # a batch-sized mask cannot be a constant
            return None
    return {"q": tq.input[0], "k": tk.input[0], "v": tv.input[0], "y": merge.output[0], "heads": heads, "width": width,
            "scale": float(scale.reshape(())), "mask": mask, "name": softmax.name or softmax.output[0]}


def _dead_code(graph) -> None:
    """Drop nodes whose outputs nobody reads (the replaced blocks), and initialisers left unused."""
    while True:
        used = {o.name for o in graph.output} | {i for n in graph.node for i in n.input}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input} | {i.name for i in graph.input}  # an initialiser listed as an input stays
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def fuse_attention(model: onnx.ModelProto) -> int:
    """Rewrite every matching attention block of ``model`` in place (see module doc); returns how many."""
    g = _Graph(model)
    blocks = [m for m in (_match(g, n) for n in list(model.graph.node) if n.op_type == "Softmax" and n.domain in ("", "ai.onnx")) if m]
    if not blocks:
        return 0
    graph = model.graph
    flat = numpy_helper.from_array(np.array([0, 0, -1], np.int64), "attention_fusion/flat_heads")  # (N, K, h, dh) -> (N, K, D)
    graph.initializer.append(flat)
    for b in blocks:
        p = b["name"] + SUFFIX
        nodes = [helper.make_node("Reshape", [b[role], flat.name], [f"{p}/{role}"], name=f"{p}/{role}") for role in ("q", "k", "v")]
        inputs = [n.output[0] for n in nodes] + ["", ""]  # no packed bias, no key padding mask
        if b["mask"] is not None:
            graph.initializer.append(numpy_helper.from_array(b["mask"], p + "/attention_bias"))
            inputs.append(p + "/attention_bias")
        nodes.append(helper.make_node(OP, inputs, [b["y"]], name=p, domain=DOMAIN, num_heads=int(b["heads"]), scale=b["scale"]))
        # The fused node takes the merged output's name and the merge Reshape's place in the graph:
        # the output projection reads it unchanged, every input is produced earlier (the graph stays
        # sorted), and the old block, now read by nobody, is dropped as dead code below.
        merge = g.producer[b["y"]]
        merge.output[0] = p + "/replaced"
        at = list(graph.node).index(merge)
        for k, n in enumerate(nodes):
            graph.node.insert(at + k, n)
    _dead_code(graph)
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return len(blocks)

