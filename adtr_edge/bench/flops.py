"""FLOPs per frame counted from an ONNX graph (Conv/Gemm/MatMul and their integer forms)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ..errors import AdtrError

# Ops whose multiply-accumulates are counted, as 2 FLOPs per MAC (multiply + add).
COUNTED_OPS = ("Conv", "ConvInteger", "QLinearConv", "MatMul", "MatMulInteger", "QLinearMatMul", "Gemm")
# (data input index, weight/second input index) of each counted op.
_OPERANDS = {"Conv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3),
             "MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3), "Gemm": (0, 1)}
FLOPS_NOTE = ("FLOPs = 2 x multiply-accumulates of Conv/Gemm/MatMul (and their integer forms) only; bias adds, "
              "element-wise ops, activations, Softmax, LayerNormalization, Resize, pooling, reductions and "
              "Q/DQ nodes are ignored (a few percent of the total for this model)")

TORCH_FLOPS_NOTE = ("torch.utils.flop_counter on the eager model: timm's features_only backbone runs every block, "
                    "also those after the last stage used, which the exported graph drops")


@dataclass
class FlopCount:
    """FLOPs of one graph at ``batch``; ``unresolved`` names counted-op nodes whose shapes were unknown."""

    total: int
    batch: int
    by_op: dict[str, int] = field(default_factory=dict)
    counted_nodes: int = 0
    ignored_ops: dict[str, int] = field(default_factory=dict)
    unresolved: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"total": self.total, "batch": self.batch, "by_op": dict(self.by_op), "counted_nodes": self.counted_nodes,
                "ignored_ops": dict(self.ignored_ops), "unresolved": list(self.unresolved), "note": FLOPS_NOTE}


def _fix_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """A copy whose symbolic input/output dims are ``batch``, so shape inference yields numbers."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.value_info[:]  # inferred afresh with the concrete batch
    initializers = {t.name for t in m.graph.initializer}
    for vi in list(m.graph.input) + list(m.graph.output):
        if vi.name in initializers or not vi.type.HasField("tensor_type"):
            continue
        for dim in vi.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.Clear()
                dim.dim_value = batch
    return m


def _known_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for t in model.graph.initializer:
        shapes[t.name] = tuple(int(d) for d in t.dims)
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            continue
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
    for node in model.graph.node:  # Constant nodes carry their shape in the attribute
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            shapes[node.output[0]] = tuple(int(d) for d in node.attribute[0].t.dims)
    return shapes


def _node_flops(node, shapes: dict[str, tuple[int, ...]]) -> int | None:
    """FLOPs of one counted node, or None when a needed shape is unknown."""
    a_idx, b_idx = _OPERANDS[node.op_type]
    if len(node.input) <= b_idx:
        return None
    a, b = shapes.get(node.input[a_idx]), shapes.get(node.input[b_idx])
    out = shapes.get(node.output[0])
    if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
        # Each output element is a dot product over (Cin / group) x kernel taps = weight.shape[1:].
        if b is None or out is None:
            return None
        return 2 * int(np.prod(out, dtype=np.int64)) * int(np.prod(b[1:], dtype=np.int64))
    if node.op_type == "Gemm":
        if a is None or b is None:
            return None
        attrs = {at.name: at.i for at in node.attribute if at.name in ("transA", "transB")}
        m, k = (a[1], a[0]) if attrs.get("transA") else (a[0], a[1])
        n = b[0] if attrs.get("transB") else b[1]
        return 2 * int(m) * int(k) * int(n)
    # MatMul family: numpy semantics; every output element is a dot product of length K.
    if a is None:
        return None
    k = a[-1]
    if out is None:
        if b is None:
            return None
        try:
            out = np.broadcast_shapes(a[:-2], b[:-2]) + (a[-2] if len(a) > 1 else 1, b[-1] if len(b) > 1 else 1)
        except ValueError:
            return None
    return 2 * int(np.prod(out, dtype=np.int64)) * int(k)


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _eval_shape_op(node, args: list, shapes: dict) -> np.ndarray | None:
    """numpy value of a small integer op on constant inputs (the shape arithmetic of a graph)."""
    op = node.op_type
    if op == "Shape":
        shape = shapes.get(node.input[0])
        if shape is None:
            return None
        return np.asarray(shape[_attr(node, "start", 0):_attr(node, "end", None)], dtype=np.int64)
    if any(a is None for a in args):
        return None
    if op == "Identity":
        return args[0]
    if op == "Gather":
        return np.take(args[0], args[1], axis=_attr(node, "axis", 0))
    if op == "Unsqueeze":
        axes = args[1] if len(args) > 1 else _attr(node, "axes")
        out = args[0]
        for ax in sorted(int(a) % (out.ndim + len(axes)) for a in np.atleast_1d(axes)):
            out = np.expand_dims(out, ax)
        return out
    if op == "Squeeze":
        axes = args[1] if len(args) > 1 else _attr(node, "axes")
        return np.squeeze(args[0], axis=None if axes is None else tuple(int(a) for a in np.atleast_1d(axes)))
    if op == "Concat":
        return np.concatenate([np.atleast_1d(a) for a in args], axis=_attr(node, "axis", 0))
    if op == "Slice":
        data, starts, ends = args[0], args[1], args[2]
        axes = args[3] if len(args) > 3 else range(len(starts))
        steps = args[4] if len(args) > 4 else [1] * len(starts)
        index = [slice(None)] * data.ndim
        for st, en, ax, sp in zip(starts, ends, axes, steps):
            index[int(ax)] = slice(int(st), int(en), int(sp))
        return data[tuple(index)]
    if op == "Cast":
        return args[0].astype(onnx.helper.tensor_dtype_to_np_dtype(_attr(node, "to")))
    binary = {"Equal": np.equal, "Add": np.add, "Sub": np.subtract, "Mul": np.multiply}
    if op in binary:
        return binary[op](args[0], args[1])
    if op == "Div" and np.issubdtype(args[0].dtype, np.integer):
        return args[0] // args[1]
    if op == "Where":
        return np.where(args[0], args[1], args[2])
    if op == "ConstantOfShape":
        value = _attr(node, "value")
        fill = onnx.numpy_helper.to_array(value).reshape(-1)[0] if value is not None else np.float32(0)
        return np.full(tuple(int(d) for d in args[0]), fill)
    return None


_SHAPE_OPS = ("Shape", "Identity", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast", "Equal", "Add", "Sub",
              "Mul", "Div", "Where", "ConstantOfShape")
_MAX_FOLDED = 64  # elements: shape tensors are tiny; anything bigger is data, not shape arithmetic


def _fold_shape_arithmetic(model: onnx.ModelProto, shapes: dict) -> int:
    """Evaluate integer shape computations (Shape -> Gather -> Concat -> Where -> ...) that ONNX's
    data propagation leaves open, and pin their results as initializers so a second shape-inference
    pass resolves Reshape/Expand outputs. Returns how many tensors were pinned."""
    values: dict[str, np.ndarray] = {}
    for t in model.graph.initializer:
        if t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) and np.prod(t.dims) <= _MAX_FOLDED:
            values[t.name] = onnx.numpy_helper.to_array(t)
    for node in model.graph.node:
        if node.op_type == "Constant":
            value = _attr(node, "value")
            if value is not None and np.prod(value.dims) <= _MAX_FOLDED:
                values[node.output[0]] = onnx.numpy_helper.to_array(value)
            continue
        if node.op_type not in _SHAPE_OPS:
            continue
        args = [values.get(i) if i else None for i in node.input]
        try:
            out = _eval_shape_op(node, args, shapes)
        except (ValueError, IndexError, TypeError):
            out = None
        if out is not None and np.asarray(out).size <= _MAX_FOLDED:
            values[node.output[0]] = np.asarray(out)
    existing = {t.name for t in model.graph.initializer}
    consumed = {i for n in model.graph.node if n.op_type not in _SHAPE_OPS + ("Constant",) for i in n.input}
    pinned = 0
    for name, value in values.items():
        if name in consumed and name not in existing:
            model.graph.initializer.append(onnx.numpy_helper.from_array(value, name))
            pinned += 1
    return pinned


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as e:  # onnx raises InferenceError and friends for inconsistent graphs
        raise AdtrError(f"ONNX shape inference failed, cannot count FLOPs: {str(e).splitlines()[0]}") from None


def count_flops(model: onnx.ModelProto, batch: int = 1) -> FlopCount:
    """FLOPs of ``model`` for a batch of ``batch`` (see ``FLOPS_NOTE`` for what is counted).

    Pure: shapes come from ONNX shape inference on a copy whose symbolic batch dim is fixed, helped
    by folding the integer shape arithmetic that the inference alone does not evaluate.
    """
    if batch < 1:
        raise AdtrError(f"batch must be >= 1 to count FLOPs, got {batch}")
    fixed = _fix_batch(model, batch)
    inferred = _infer(fixed)
    shapes = _known_shapes(inferred)
    for _ in range(3):  # each pass can expose shapes that feed further Shape ops
        if not _fold_shape_arithmetic(fixed, shapes):
            break
        del fixed.graph.value_info[:]
        inferred = _infer(fixed)
        shapes = _known_shapes(inferred)
    result = FlopCount(total=0, batch=batch)
    for node in inferred.graph.node:
        if node.op_type not in COUNTED_OPS:
            result.ignored_ops[node.op_type] = result.ignored_ops.get(node.op_type, 0) + 1
            continue
        flops = _node_flops(node, shapes)
        if flops is None:
            result.unresolved.append(node.name or f"{node.op_type}->{node.output[0]}")
            continue
        result.by_op[node.op_type] = result.by_op.get(node.op_type, 0) + flops
        result.counted_nodes += 1
        result.total += flops
    return result


def count_graph_flops(path: str | Path, batch: int = 1) -> FlopCount:
    p = Path(path)
    if not p.is_file():
        raise AdtrError(f"ONNX graph not found: {p}")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:
        raise AdtrError(f"{p}: not a readable ONNX file ({str(e).splitlines()[0]})") from None
    return count_flops(model, batch)


