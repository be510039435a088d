"""What is inside an ONNX graph, and will each TensorRT parser take it.

``inspect_onnx`` answers the questions asked before shipping a graph to a device: which opset and
producer made it, does it carry adtr-edge metadata, what are its tensors (dynamic dims by name),
how big are its weights, is it quantised (Q/DQ), and which operators or restrictions would make the
TensorRT 8.5 / 8.6 / 10.x ONNX parsers refuse it.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ..errors import AdtrError
from ..fileio import sha256_file
from .op_support import QDQ_OPS, TABLES, VERSIONS, op_types, restriction_problems, unsupported

NO_METADATA = "no adtr-edge metadata"


def load_onnx(path: str | Path):
    """Load an ONNX file (weights included), or raise AdtrError naming it."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise AdtrError(f"ONNX file not found: {p}")
    try:
        model = onnx.load(str(p))
    except Exception as e:  # protobuf DecodeError, external-data errors, ...
        raise AdtrError(f"{p}: not a readable ONNX model ({type(e).__name__}: {str(e).strip() or 'parse error'})") from None
    # A random byte string can decode as an empty ModelProto; a real model has a graph and an opset.
    if not model.opset_import or not (model.graph.node or model.graph.output):
        raise AdtrError(f"{p}: not an ONNX model (no graph or opset found)")
    return model


def inspect_onnx(path: str | Path) -> dict:
    """Describe one ONNX file as a JSON-serialisable dict (see module docstring)."""
    import onnx

    from ..metadata import read_onnx_metadata

    p = Path(path)
    model = load_onnx(p)
    graph = model.graph

    try:
        meta = read_onnx_metadata(model).raw
        meta_problem = None
    except AdtrError as e:
        meta = None
        # A missing key is expected for foreign graphs; a broken document is worth its own line.
        meta_problem = NO_METADATA if "no adtr-edge metadata" in str(e) else f"{NO_METADATA}: {e}"

    kinds = Counter(op_types(model))
    init_names = {t.name for t in graph.initializer}
    params = sum(_numel(t.dims) for t in graph.initializer)
    param_bytes = sum(_tensor_bytes(t) for t in graph.initializer)
    qdq = sum(n for op, n in kinds.items() if op in QDQ_OPS)

    tensorrt = {}
    for v in VERSIONS:
        tensorrt[v] = {
            "unsupported_ops": unsupported(model, v),
            "problems": restriction_problems(model, v),
            "source": TABLES[v].source,
        }
        if TABLES[v].note:
            tensorrt[v]["note"] = TABLES[v].note

    return {
        "file": str(p),
        "bytes": p.stat().st_size,
        "sha256": sha256_file(p),
        "ir_version": int(model.ir_version),
        "opsets": {(imp.domain or "ai.onnx"): int(imp.version) for imp in model.opset_import},
        "producer": " ".join(x for x in (model.producer_name, model.producer_version) if x) or None,
        "graph_name": graph.name or None,
        "metadata": meta,
        "metadata_problem": meta_problem,
        # Initializers listed as graph inputs (old exporters) are weights, not runtime inputs.
        "inputs": [_value_info(vi, onnx) for vi in graph.input if vi.name not in init_names],
        "outputs": [_value_info(vi, onnx) for vi in graph.output],
        "nodes": sum(kinds.values()),
        "op_histogram": sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])),
        "parameters": params,
        "parameter_bytes": param_bytes,
        "qdq": {"present": qdq > 0, "nodes": qdq,
                "quantize": kinds.get("QuantizeLinear", 0), "dequantize": kinds.get("DequantizeLinear", 0)},
        "tensorrt": tensorrt,
    }


def inspect_path(path: str | Path) -> list[dict]:
    """Inspect a single ``.onnx`` file, or every graph listed in an export folder's manifest."""
    p = Path(path)
    if p.is_dir():
        manifest = p / "manifest.json"
        if not manifest.is_file():
            raise AdtrError(f"{p}: a folder but not an export (no manifest.json)")
        try:
            doc = json.loads(manifest.read_text(encoding="utf-8"))
            graphs = doc["graphs"]
            files = [(name, p / g["file"], g.get("sha256")) for name, g in graphs.items()]
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise AdtrError(f"{manifest}: not an adtr-edge manifest ({type(e).__name__}: {e})") from None
        if not files:
            raise AdtrError(f"{manifest}: lists no graphs")
        reports = []
        for name, file, expected_sha in files:
            info = inspect_onnx(file)
            info["manifest_graph"] = name
            if expected_sha is not None:
                info["manifest_sha256_ok"] = expected_sha == info["sha256"]
            reports.append(info)
        return reports
    return [inspect_onnx(p)]


def format_report(info: dict) -> str:
    """Plain-text report for the terminal."""
    lines = []
    title = info["file"] + (f"  [{info['manifest_graph']}]" if "manifest_graph" in info else "")
    lines.append(title)
    lines.append("=" * min(len(title), 100))
    lines.append(f"size        {_human(info['bytes'])} ({info['bytes']} bytes)")
    lines.append(f"sha256      {info['sha256']}")
    if info.get("manifest_sha256_ok") is False:
        lines.append("            WARNING: does not match the sha256 in manifest.json")
    lines.append(f"opsets      {', '.join(f'{d} {v}' for d, v in info['opsets'].items())}   (IR {info['ir_version']})")
    lines.append(f"producer    {info['producer'] or '-'}")
    meta = info["metadata"]
    if meta is None:
        lines.append(f"metadata    {info['metadata_problem']}")
    else:
        pre = meta.get("preprocess", {})
        feats = meta.get("features", {})
        lines.append(f"metadata    adtr-edge {meta.get('toolkit_version', '?')}, graph {meta.get('graph', '?')}, "
                     f"input {pre.get('height', '?')}x{pre.get('width', '?')}, "
                     f"features {feats.get('channels', '?')}ch grid {feats.get('grid', '?')}")
    lines.append("")
    lines.append("tensors")
    for kind, items in (("in ", info["inputs"]), ("out", info["outputs"])):
        for t in items:
            shape = "?" if t["shape"] is None else "(" + ", ".join(str(d) for d in t["shape"]) + ")"
            lines.append(f"  {kind} {t['name']:<20} {t['dtype']:<8} {shape}")
    lines.append("")
    lines.append(f"parameters  {info['parameters']:,} ({_human(info['parameter_bytes'])})")
    q = info["qdq"]
    lines.append(f"Q/DQ        {'yes' if q['present'] else 'no'}"
                 + (f" ({q['quantize']} QuantizeLinear, {q['dequantize']} DequantizeLinear)" if q["present"] else ""))
    lines.append("")
    lines.append(f"operators   {info['nodes']} nodes, {len(info['op_histogram'])} types")
    for op, n in info["op_histogram"]:
        lines.append(f"  {n:>6}  {op}")
    lines.append("")
    lines.append("TensorRT ONNX parser")
    for v, r in info["tensorrt"].items():
        bad = r["unsupported_ops"]
        status = "ok" if not bad and not r["problems"] else "PROBLEMS"
        lines.append(f"  {v:<6} {status}" + (f": unsupported {', '.join(bad)}" if bad else ""))
        for prob in r["problems"]:
            lines.append(f"         - {prob}")
    return "\n".join(lines)


def _value_info(vi, onnx) -> dict:
    t = vi.type
    if not t.HasField("tensor_type"):
        return {"name": vi.name, "dtype": t.WhichOneof("value") or "unknown", "shape": None}
    tt = t.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name if tt.elem_type else "unknown"
    if not tt.HasField("shape"):
        return {"name": vi.name, "dtype": dtype, "shape": None}
    # A dim is a number, a symbolic name (e.g. "batch"), or "?" when neither is recorded.
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
    return {"name": vi.name, "dtype": dtype, "shape": shape}


def _numel(dims) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def _tensor_bytes(t) -> int:
    import onnx

    if t.data_location == onnx.TensorProto.EXTERNAL:
        length = {e.key: e.value for e in t.external_data}.get("length")
        if length is not None:
            return int(length)
    if t.data_type == onnx.TensorProto.STRING:
        return sum(len(s) for s in t.string_data)
    n = _numel(t.dims)
    if t.data_type in _PACKED_4BIT:
        return (n + 1) // 2  # two 4-bit values per byte
    return n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


# INT4, UINT4, FLOAT4E2M1 (TensorProto numbers 21-23): numpy has no 4-bit type, so size them here.
_PACKED_4BIT = frozenset({21, 22, 23})


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)
