"""Which ONNX operators the TensorRT ONNX parser imports, per TensorRT version.

Why this exists: the runtime must build engines on Jetsons stuck on old TensorRT (JetPack 5 ships
8.5, JetPack 6.0 8.6, JetPack 6.1/6.2 10.3), so an exported graph is checked against each of those
parsers *before* anyone copies it to a device and waits minutes for a build to fail.

Source of the tables: the operator support matrix ``docs/operators.md`` of github.com/onnx/onnx-tensorrt
(the parser that TensorRT ships), read at the commits that NVIDIA/TensorRT's ``parsers/onnx`` submodule
pins on each release branch. The lists below are the operator names marked ``Y`` (supported) and
``N`` (listed, not supported) in those files; operators the matrix does not list at all are treated
as unsupported too. Per-op restrictions that matter for ADTR graphs are summarised in our own words
in ``RESTRICTIONS`` and checked in ``restriction_problems``.

To refresh: read the same file at the commit a newer TensorRT release branch pins as parsers/onnx.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import AdtrError


@dataclass(frozen=True)
class ParserTable:
    version: str
    source: str  # where the list was read: repository, ref, commit, file
    max_opset: int  # highest default-domain opset the matrix claims
    supported: frozenset[str]
    listed_unsupported: frozenset[str]
    note: str = ""


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# --- TensorRT 8.5 (JetPack 5.x) -------------------------------------------------------------
# onnx/onnx-tensorrt docs/operators.md at fd119fec8565264add819f8edc801066116a32dd, the commit
# NVIDIA/TensorRT branch release/8.5 pins as parsers/onnx (identical to the tip of onnx-tensorrt
# branch 8.5-GA, fdeeaca). Header: "supports operators up to Opset 17".
_TRT85_Y = _names("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast
Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather
GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
GridSample GRU HardSigmoid HardSwish Identity If ImageScaler InstanceNormalization IsNaN
LeakyRelu Less LessOrEqual Log LogSoftmax Loop LpNormalization LpPool LRN LSTM MatMul Max
MaxPool Mean MeanVarianceNormalization Min Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or
Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence
RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid
Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan
Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""")
_TRT85_N = _names("""
Bernoulli BitShift BlackmanWindow Compress ConcatFromSequence ConvInteger Det DFT
DynamicQuantizeLinear HammingWindow HannWindow Hardmax IsInf LayerNormalization MatMulInteger
MaxRoiPool MaxUnpool MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional
OptionalGetElement OptionalHasElement QLinearConv QLinearMatMul SequenceAt SequenceConstruct
SequenceEmpty SequenceErase SequenceInsert SequenceLength SequenceMap SoftmaxCrossEntropyLoss
SplitToSequence STFT StringNormalizer TfIdfVectorizer Unique
""")

# --- TensorRT 8.6 (JetPack 6.0) -------------------------------------------------------------
# onnx/onnx-tensorrt docs/operators.md at 6ba67d3428e05f690145373ca87fb8d32f98df45 ("TensorRT 8.6.1
# Parser Update"), pinned by NVIDIA/TensorRT release/8.6 (same file as the tip of branch 8.6-GA).
# Versus 8.5: adds LayerNormalization, GroupNormalization, IsInf. Header: "up to Opset 17".
_TRT86_Y = _TRT85_Y | _names("GroupNormalization IsInf LayerNormalization")
_TRT86_N = _TRT85_N - _names("IsInf LayerNormalization")

# --- TensorRT 10.3 (JetPack 6.1 / 6.2) ------------------------------------------------------
# NVIDIA/TensorRT release/10.3 pins onnx-tensorrt 62bdde2a04fcd53c2409cb895ee18db445b7e755, but that
# commit is NOT in the onnx-tensorrt snapshot available to us (it ends at branch 10.1-GA, June 2024).
# So this list is docs/operators.md of onnx-tensorrt branch 10.1-GA (96e78110, header "opset 9 to
# opset 20"), and the changelog (docs/Changelog.md at the release/10.16 pointer 6bde6596) lists no
# new operator for 10.2 ("minor changes to GRU and Squeeze importers") or 10.3 ("tensor axes inputs
# for Slice; ScatterElements plugin update"); the next additions are 10.4 (Blackman/Hamming/Hann
# windows) and 10.5 (STFT). The operator *set* is therefore that of 10.1; the opset ceiling is
# the 10.1 file's and may be higher in 10.3.
_TRT103_Y = _TRT86_Y | _names("CastLike DeformConv Gelu Hardmax Mish")
_TRT103_N = (_TRT86_N - _names("Hardmax")) | _names("""
AffineGrid BitwiseAnd BitwiseNot BitwiseOr BitwiseXor CenterCropPad Col2Im ImageDecoder
RegexFullMatch StringConcat StringSplit
""")

# --- TensorRT 10.16 (newest 10.x; desktop/server, not JetPack) -------------------------------
# onnx/onnx-tensorrt docs/operators.md at 6bde6596eca84abf9afe9b4d21c18c32800fd3ad, pinned by
# NVIDIA/TensorRT release/10.16. Header: "opset 9 to opset 24". Versus 10.3: adds the window ops
# (10.4), STFT (10.5), Attention (10.14), RMSNormalization, RotaryEmbedding, TensorScatter (10.15).
_TRT1016_Y = _TRT103_Y | _names("""
Attention BlackmanWindow HammingWindow HannWindow RMSNormalization RotaryEmbedding STFT TensorScatter
""")
_TRT1016_N = _TRT103_N - _names("BlackmanWindow HammingWindow HannWindow STFT")

TABLES: dict[str, ParserTable] = {
    "8.5": ParserTable("8.5", "onnx/onnx-tensorrt@fd119fec (TensorRT release/8.5 parsers/onnx) docs/operators.md",
                       17, _TRT85_Y, _TRT85_N),
    "8.6": ParserTable("8.6", "onnx/onnx-tensorrt@6ba67d34 (TensorRT release/8.6 parsers/onnx) docs/operators.md",
                       17, _TRT86_Y, _TRT86_N),
    "10.3": ParserTable("10.3", "onnx/onnx-tensorrt@96e78110 (branch 10.1-GA) docs/operators.md + docs/Changelog.md",
                        20, _TRT103_Y, _TRT103_N,
                        note="10.3's own operators.md (onnx-tensorrt@62bdde2a) was not available; operator set "
                             "taken from 10.1-GA, which the changelog says 10.2/10.3 did not extend"),
    "10.16": ParserTable("10.16", "onnx/onnx-tensorrt@6bde6596 (TensorRT release/10.16 parsers/onnx) docs/operators.md",
                         24, _TRT1016_Y, _TRT1016_N),
}

VERSIONS: tuple[str, ...] = tuple(TABLES)

# Restrictions from the same files (and, for UINT8 casts, the parser source builtin_op_importers.cpp /
# ModelImporter.cpp on branches 8.5-GA and 8.6-GA) that can break an ADTR graph, in our words:
# op -> version -> restriction. ``restriction_problems`` checks the ones a graph can violate.
RESIZE_MODES = frozenset({"nearest", "linear"})
RESIZE_COORD_MODES = frozenset({"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"})
RESIZE_NEAREST_MODES = frozenset({"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"})

RESTRICTIONS: dict[str, dict[str, str]] = {
    "Resize": {v: "modes nearest/linear only (no cubic); coordinate modes half_pixel, pytorch_half_pixel, "
                  "tf_half_pixel_for_nn, asymmetric, align_corners" for v in VERSIONS}
    | {v: "as 8.x, plus: no antialias, keep_aspect_ratio_policy must be stretch" for v in ("10.3", "10.16")},
    "LayerNormalization": {"8.5": "not supported: export at opset <= 16 so it is decomposed (and pin it to FP32)",
                           "8.6": "supported (normalization layer)",
                           "10.3": "supported; only the first output Y", "10.16": "supported; only the first output Y"},
    "QuantizeLinear": {"8.5": "y_zero_point must be 0; INT8 only (UINT8 rejected)", "8.6": "y_zero_point must be 0; INT8 only",
                       "10.3": "y_zero_point must be 0; INT8/FP8/INT4", "10.16": "y_zero_point must be 0; INT8/FP8/INT4/FP4"},
    "DequantizeLinear": {"8.5": "x_zero_point must be 0; INT8 only", "8.6": "x_zero_point must be 0; INT8 only",
                         "10.3": "x_zero_point must be 0; INT8/FP8/INT4", "10.16": "x_zero_point must be 0; INT8/FP8/INT4/FP4"},
    "Cast": {"8.5": "a UINT8 tensor may only be cast to FLOAT or FLOAT16 (and only FLOAT/FLOAT16 to UINT8)",
             "8.6": "UINT8 only as a network input or output, never an intermediate tensor",
             "10.3": "UINT8 only as a network input or output, never an intermediate tensor",
             "10.16": "UINT8 only as a network input or output, never an intermediate tensor"},
    "Slice": {"8.5": "axes must be an initializer", "8.6": "axes must be an initializer",
              "10.3": "tensor axes accepted from 10.3 (changelog)", "10.16": "tensor axes accepted"},
    "ReduceMax": {v: "axes must be an initializer (opset 18 passes axes as an input)" for v in ("10.3", "10.16")},
    "ReduceMin": {v: "axes must be an initializer (opset 18 passes axes as an input)" for v in ("10.3", "10.16")},
}

# Operators whose graphs are quantised: counted by inspect.
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def table(version: str) -> ParserTable:
    key = str(version).strip()
    if key not in TABLES:
        # Accept a full TensorRT version string such as "10.3.0.30" or "8.6.2".
        parts = key.split(".")
        for n in (2, 1):
            if ".".join(parts[:n]) in TABLES:
                return TABLES[".".join(parts[:n])]
        raise AdtrError(f"unknown TensorRT version {version!r} for the ONNX operator tables (known: {', '.join(VERSIONS)})")
    return TABLES[key]


def supported_ops(version: str) -> frozenset[str]:
    """Default-domain ONNX operator types the TensorRT ``version`` parser imports."""
    return table(version).supported


def op_types(model_or_op_types) -> list[str]:
    """Operator type names of a model (nodes of the main graph and of subgraphs) or of an iterable.

    Operators outside the default ONNX domain are returned as ``domain::Op``: TensorRT only runs
    them through a plugin, so they never count as supported.
    """
    if hasattr(model_or_op_types, "graph"):
        return [_qualified(n) for n in iter_nodes(model_or_op_types.graph)]
    if isinstance(model_or_op_types, str):
        return [model_or_op_types]
    return [str(t) for t in model_or_op_types]


def unsupported(model_or_op_types, version: str) -> list[str]:
    """Sorted distinct operator types the TensorRT ``version`` parser does not import."""
    ok = supported_ops(version)
    return sorted({t for t in op_types(model_or_op_types) if t not in ok})


def iter_nodes(graph) -> Iterable:
    """All nodes of a graph, including those in If/Loop/Scan bodies."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from iter_nodes(attr.g)
            for sub in attr.graphs:
                yield from iter_nodes(sub)


def _qualified(node) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"


# ONNX TensorProto element types used below (numbers from onnx.proto, stable across releases).
_FLOAT, _UINT8, _FLOAT16 = 1, 2, 10


def restriction_problems(model, version: str) -> list[str]:
    """Violations of the per-op restrictions above that can be seen statically in ``model``.

    Only what the graph itself settles is checked (attributes, initializer values, declared
    element types); an empty list does not promise the build succeeds.
    """
    from onnx import numpy_helper

    tab = table(version)
    v = tab.version
    graph = model.graph
    problems: list[str] = []

    opset = default_opset(model)
    if opset is not None and opset > tab.max_opset:
        problems.append(f"opset {opset} is above {tab.max_opset}, the highest the TensorRT {v} parser documents")

    inits = {t.name: t for t in graph.initializer}
    dtypes = _elem_types(model)
    graph_outputs = {o.name for o in graph.output}
    newer = v not in ("8.5", "8.6")

    for node in iter_nodes(graph):
        attrs = {a.name: a for a in node.attribute}
        where = f"{node.op_type} node {node.name or '(unnamed)'}"
        if node.op_type == "Resize" and node.domain in ("", "ai.onnx"):
            mode = _str_attr(attrs, "mode", "nearest")
            coord = _str_attr(attrs, "coordinate_transformation_mode", "half_pixel")
            if mode not in RESIZE_MODES:
                problems.append(f"{where}: mode {mode!r} is not supported (nearest, linear)")
            if coord not in RESIZE_COORD_MODES:
                problems.append(f"{where}: coordinate_transformation_mode {coord!r} is not supported")
            if mode == "nearest":
                nearest = _str_attr(attrs, "nearest_mode", "round_prefer_floor")
                if nearest not in RESIZE_NEAREST_MODES:
                    problems.append(f"{where}: nearest_mode {nearest!r} is not supported")
            if newer and "antialias" in attrs and attrs["antialias"].i:
                problems.append(f"{where}: antialias is not supported")
            if newer and _str_attr(attrs, "keep_aspect_ratio_policy", "stretch") != "stretch":
                problems.append(f"{where}: keep_aspect_ratio_policy must be 'stretch'")
        elif node.op_type in QDQ_OPS and len(node.input) > 2 and node.input[2] in inits:
            zp = inits[node.input[2]]
            if zp.data_type == _UINT8:
                problems.append(f"{where}: UINT8 zero point (asymmetric UINT8 quantisation) is not supported")
            if numpy_helper.to_array(zp).any():
                problems.append(f"{where}: zero point must be 0")
        elif node.op_type == "LayerNormalization" and newer:
            if any(name for name in node.output[1:]):
                problems.append(f"{where}: only the first output (Y) is supported")
        elif node.op_type == "Cast":
            to = attrs["to"].i if "to" in attrs else None
            src = dtypes.get(node.input[0]) if node.input else None
            if v == "8.5":
                if src == _UINT8 and to not in (_FLOAT, _FLOAT16):
                    problems.append(f"{where}: a UINT8 tensor can only be cast to FLOAT or FLOAT16")
                if to == _UINT8 and src is not None and src not in (_FLOAT, _FLOAT16):
                    problems.append(f"{where}: only FLOAT or FLOAT16 can be cast to UINT8")
            elif to == _UINT8 and node.output and node.output[0] not in graph_outputs:
                problems.append(f"{where}: UINT8 is allowed only for network inputs/outputs, not intermediate tensors")
    return problems


def default_opset(model) -> int | None:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return None


def _str_attr(attrs: dict, name: str, default: str) -> str:
    a = attrs.get(name)
    return a.s.decode("utf-8", "replace") if a is not None and a.s else default


def _elem_types(model) -> dict[str, int]:
    graph = model.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    return types
