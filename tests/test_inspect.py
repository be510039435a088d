"""`adtr-edge inspect` and the TensorRT ONNX-parser operator tables, on small hand-built graphs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import typer
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from adtr_edge.errors import AdtrError
from adtr_edge.export import op_support
from adtr_edge.export.cli import register
from adtr_edge.export.inspect import NO_METADATA, format_report, inspect_onnx, inspect_path
from adtr_edge.fileio import sha256_file
from adtr_edge.metadata import METADATA_KEY, build_metadata
from adtr_edge.postprocessing import Thresholds
from adtr_edge.preprocessing import PreprocessSpec


# ---------------------------------------------------------------- graph builders

def _meta(graph: str) -> str:
    meta = build_metadata(model_config={"name": "tiny"}, preprocess=PreprocessSpec(height=32, width=32), channels=8,
                          grid=(4, 4), stages=[2], thresholds=Thresholds(0.5, 0.1, 0.9), pool_kernel=4)
    return meta.for_graph(graph).to_json()


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def backbone_model(opset: int = 17, with_meta: bool = True) -> onnx.ModelProto:
    """images uint8 (batch,32,32,3) -> Cast -> Transpose -> Conv(8, 3x3) -> Relu -> AveragePool(8) -> features."""
    w = numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "conv_w")
    b = numpy_helper.from_array(np.zeros(8, np.float32), "conv_b")
    nodes = [
        helper.make_node("Cast", ["images"], ["x_f"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Transpose", ["x_f"], ["x_nchw"], perm=[0, 3, 1, 2], name="to_nchw"),
        helper.make_node("Conv", ["x_nchw", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("AveragePool", ["r"], ["features"], kernel_shape=[8, 8], strides=[8, 8], name="pool"),
    ]
    g = helper.make_graph(
        nodes, "backbone",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", 32, 32, 3])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 8, 4, 4])],
        initializer=[w, b])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="unit-test",
                          producer_version="1.0")
    if with_meta:
        helper.set_model_props(m, {METADATA_KEY: _meta("backbone")})
    onnx.checker.check_model(m)
    return m


def single_op_model(op: str, opset: int, **attrs) -> onnx.ModelProto:
    g = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"], name=op.lower(), **attrs)], op.lower(),
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def layernorm_model() -> onnx.ModelProto:
    scale = numpy_helper.from_array(np.ones(16, np.float32), "ln_scale")
    bias = numpy_helper.from_array(np.zeros(16, np.float32), "ln_bias")
    g = helper.make_graph(
        [helper.make_node("LayerNormalization", ["x", "ln_scale", "ln_bias"], ["y"], axis=-1, name="ln")], "ln",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 10, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10, 16])],
        initializer=[scale, bias])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    return m


def qdq_model(zero_point: int = 0, zp_dtype=np.int8) -> onnx.ModelProto:
    """x -> Q -> DQ -> MatMul(W) with W also through DQ: 3 Q/DQ nodes."""
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "s"),
        numpy_helper.from_array(np.array(zero_point, zp_dtype), "zp"),
        numpy_helper.from_array(np.ones((16, 4), np.int8), "w_q"),
        numpy_helper.from_array(np.array(0.01, np.float32), "w_s"),
        numpy_helper.from_array(np.array(0, np.int8), "w_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="dq"),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w"], name="dq_w"),
        helper.make_node("MatMul", ["xd", "w"], ["y"], name="mm"),
    ]
    g = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    return m


def resize_model(mode: str) -> onnx.ModelProto:
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    g = helper.make_graph(
        [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode=mode, name="up")], "resize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1, 8, 8])], initializer=[scales])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    return m


# ---------------------------------------------------------------- op tables

def test_versions_cover_the_jetpack_releases():
    assert {"8.5", "8.6", "10.3"} <= set(op_support.VERSIONS)
    for v in op_support.VERSIONS:
        t = op_support.TABLES[v]
        assert "docs/operators.md" in t.source
        assert not (t.supported & t.listed_unsupported), v
        # Every version runs the ops an ADTR graph is made of.
        assert {"Conv", "MatMul", "Softmax", "Resize", "ReduceMax", "AveragePool", "Cast"} <= t.supported


def test_tables_only_grow_between_versions():
    for older, newer in zip(op_support.VERSIONS, op_support.VERSIONS[1:]):
        assert op_support.supported_ops(older) <= op_support.supported_ops(newer), (older, newer)


def test_known_differences_between_versions():
    # LayerNormalization arrived in the 8.6 parser (8.6 EA changelog); 8.5 lists it as N.
    assert "LayerNormalization" in op_support.TABLES["8.5"].listed_unsupported
    assert "LayerNormalization" in op_support.supported_ops("8.6")
    # Hardmax: N in 8.5/8.6, Y in 10.x (added in 9.2).
    assert op_support.unsupported(["Hardmax", "Conv"], "8.6") == ["Hardmax"]
    assert op_support.unsupported(["Hardmax", "Conv"], "10.3") == []
    # Window ops came in 10.4: not in 10.3 (JetPack 6.1), in the newest 10.x.
    assert op_support.unsupported(["HannWindow"], "10.3") == ["HannWindow"]
    assert op_support.unsupported(["HannWindow"], "10.16") == []


def test_version_strings_and_unknown_version():
    assert op_support.supported_ops("10.3.0.30") == op_support.supported_ops("10.3")
    assert op_support.supported_ops("8.6.2") == op_support.supported_ops("8.6")
    with pytest.raises(AdtrError, match="7.1"):
        op_support.supported_ops("7.1")


def test_custom_domain_ops_are_never_supported():
    node = helper.make_node("FusedMatMul", ["a", "b"], ["c"], domain="com.microsoft")
    g = helper.make_graph([node], "g", [], [])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    assert op_support.unsupported(m, "10.16") == ["com.microsoft::FusedMatMul"]


# ---------------------------------------------------------------- inspect_onnx

def test_inspect_backbone_graph(tmp_path):
    path = _save(backbone_model(), tmp_path / "backbone.onnx")
    info = inspect_onnx(path)
    assert info["bytes"] == path.stat().st_size
    assert info["sha256"] == sha256_file(path)
    assert info["opsets"] == {"ai.onnx": 17}
    assert info["producer"] == "unit-test 1.0"
    assert info["metadata"]["graph"] == "backbone" and info["metadata_problem"] is None
    assert info["inputs"] == [{"name": "images", "dtype": "uint8", "shape": ["batch", 32, 32, 3]}]
    assert info["outputs"] == [{"name": "features", "dtype": "float32", "shape": ["batch", 8, 4, 4]}]
    assert info["parameters"] == 8 * 3 * 3 * 3 + 8
    assert info["parameter_bytes"] == 4 * (8 * 3 * 3 * 3 + 8)
    assert info["qdq"] == {"present": False, "nodes": 0, "quantize": 0, "dequantize": 0}
    assert info["nodes"] == 5
    for v in op_support.VERSIONS:
        assert info["tensorrt"][v]["unsupported_ops"] == [], v
        assert info["tensorrt"][v]["problems"] == [], v
    json.dumps(info)  # the --json output must serialise


def test_histogram_sorted_by_count(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Relu", ["b"], ["c"]), helper.make_node("Sigmoid", ["c"], ["d"]),
             helper.make_node("Add", ["d", "c"], ["e"]), helper.make_node("Add", ["e", "a"], ["y"])]
    g = helper.make_graph(nodes, "h", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    info = inspect_onnx(_save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "h.onnx"))
    assert info["op_histogram"] == [("Relu", 3), ("Add", 2), ("Sigmoid", 1)]
    assert info["metadata"] is None and info["metadata_problem"] == NO_METADATA


def test_graph_without_metadata_is_still_inspected(tmp_path):
    info = inspect_onnx(_save(backbone_model(with_meta=False), tmp_path / "plain.onnx"))
    assert info["metadata"] is None
    assert info["metadata_problem"] == NO_METADATA
    assert NO_METADATA in format_report(info)


def test_layernorm_needs_trt_86(tmp_path):
    info = inspect_onnx(_save(layernorm_model(), tmp_path / "ln.onnx"))
    trt = info["tensorrt"]
    assert trt["8.5"]["unsupported_ops"] == ["LayerNormalization"]
    assert trt["8.6"]["unsupported_ops"] == [] and trt["10.3"]["unsupported_ops"] == []
    assert info["inputs"][0]["shape"] == ["batch", 10, 16]


def test_op_missing_from_older_parsers(tmp_path):
    info = inspect_onnx(_save(single_op_model("Hardmax", 13), tmp_path / "hardmax.onnx"))
    assert info["tensorrt"]["8.5"]["unsupported_ops"] == ["Hardmax"]
    assert info["tensorrt"]["8.6"]["unsupported_ops"] == ["Hardmax"]
    assert info["tensorrt"]["10.3"]["unsupported_ops"] == []
    report = format_report(info)
    assert "8.5    PROBLEMS: unsupported Hardmax" in report
    assert "10.3   ok" in report


def test_qdq_count_and_zero_point_rules(tmp_path):
    info = inspect_onnx(_save(qdq_model(), tmp_path / "qdq.onnx"))
    assert info["qdq"] == {"present": True, "nodes": 3, "quantize": 1, "dequantize": 2}
    assert all(not r["problems"] and not r["unsupported_ops"] for r in info["tensorrt"].values())

    nonzero = inspect_onnx(_save(qdq_model(zero_point=3), tmp_path / "qdq_zp.onnx"))
    problems = nonzero["tensorrt"]["10.3"]["problems"]
    assert sum("zero point must be 0" in p for p in problems) == 2  # the Q and the DQ sharing 'zp'

    asym = inspect_onnx(_save(qdq_model(zero_point=128, zp_dtype=np.uint8), tmp_path / "qdq_u8.onnx"))
    assert any("UINT8 zero point" in p for p in asym["tensorrt"]["8.5"]["problems"])


def test_resize_modes(tmp_path):
    ok = inspect_onnx(_save(resize_model("linear"), tmp_path / "linear.onnx"))
    assert all(not r["problems"] for r in ok["tensorrt"].values())
    cubic = inspect_onnx(_save(resize_model("cubic"), tmp_path / "cubic.onnx"))
    for v in op_support.VERSIONS:
        assert cubic["tensorrt"][v]["problems"] == ["Resize node up: mode 'cubic' is not supported (nearest, linear)"]


def test_opset_above_parser_maximum(tmp_path):
    info = inspect_onnx(_save(backbone_model(opset=18), tmp_path / "op18.onnx"))
    assert any("opset 18" in p for p in info["tensorrt"]["8.5"]["problems"])
    assert any("opset 18" in p for p in info["tensorrt"]["8.6"]["problems"])
    assert info["tensorrt"]["10.3"]["problems"] == []


def test_uint8_intermediate_rejected_from_86():
    nodes = [helper.make_node("Cast", ["x"], ["u"], to=TensorProto.UINT8, name="to_u8"),
             helper.make_node("Cast", ["u"], ["y"], to=TensorProto.FLOAT, name="back")]
    g = helper.make_graph(nodes, "u8", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert any("intermediate" in p for p in op_support.restriction_problems(m, "8.6"))
    assert op_support.restriction_problems(m, "8.5") == []  # 8.5 allows FLOAT <-> UINT8 casts


@pytest.mark.parametrize("content", [b"", b"\x00\x01garbage\xff" * 50, b"hello, I am a text file\n"])
def test_corrupt_file_is_an_adtr_error(tmp_path, content):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    with pytest.raises(AdtrError, match="bad.onnx"):
        inspect_onnx(bad)


def test_missing_file_is_an_adtr_error(tmp_path):
    with pytest.raises(AdtrError, match="nope.onnx"):
        inspect_onnx(tmp_path / "nope.onnx")


# ---------------------------------------------------------------- export folders and CLI

def _export_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "export"
    folder.mkdir()
    _save(backbone_model(), folder / "backbone.onnx")
    _save(layernorm_model(), folder / "transformer.onnx")
    manifest = {"format": "adtr-edge/1", "kind": "onnx", "graphs": {
        "backbone": {"file": "backbone.onnx", "sha256": sha256_file(folder / "backbone.onnx")},
        "transformer": {"file": "transformer.onnx", "sha256": "0" * 64}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_inspect_export_folder(tmp_path):
    reports = inspect_path(_export_folder(tmp_path))
    assert [r["manifest_graph"] for r in reports] == ["backbone", "transformer"]
    assert reports[0]["manifest_sha256_ok"] is True
    assert reports[1]["manifest_sha256_ok"] is False
    assert "does not match the sha256 in manifest.json" in format_report(reports[1])


def test_folder_without_manifest(tmp_path):
    with pytest.raises(AdtrError, match="manifest.json"):
        inspect_path(tmp_path)


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root():  # keeps 'inspect' a named subcommand, as in the real CLI
        pass

    register(app)
    return app


def test_cli_prints_report_and_writes_json(tmp_path):
    path = _save(backbone_model(), tmp_path / "backbone.onnx")
    out = tmp_path / "report.json"
    result = CliRunner().invoke(_app(), ["inspect", str(path), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "images" in result.output and "uint8" in result.output and "(batch, 32, 32, 3)" in result.output
    assert "Conv" in result.output
    data = json.loads(out.read_text())
    assert isinstance(data, list) and data[0]["sha256"] == sha256_file(path)
    assert data[0]["tensorrt"]["8.5"]["unsupported_ops"] == []


def test_cli_folder_and_errors(tmp_path):
    folder = _export_folder(tmp_path)
    result = CliRunner().invoke(_app(), ["inspect", str(folder)])
    assert result.exit_code == 0, result.output
    assert "[backbone]" in result.output and "[transformer]" in result.output
    assert "unsupported LayerNormalization" in result.output

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx at all")
    result = CliRunner().invoke(_app(), ["inspect", str(bad)])
    assert isinstance(result.exception, AdtrError) and "bad.onnx" in str(result.exception)


# ---------------------------------------------------------------- a real export

def test_real_export_is_accepted_by_86_and_10x(exported_model):
    folder = exported_model
    reports = {r["manifest_graph"]: r for r in inspect_path(folder)}
    assert set(reports) == {"backbone", "transformer"}
    bb, tr = reports["backbone"], reports["transformer"]
    assert bb["inputs"][0]["name"] == "images" and bb["inputs"][0]["dtype"] == "uint8"
    assert bb["inputs"][0]["shape"][0] == "batch"
    assert {o["name"] for o in tr["outputs"]} == {"anomaly_map", "score"}
    for r in reports.values():
        assert r["manifest_sha256_ok"] is True
        assert r["metadata"] is not None
        for v in ("8.6", "10.3", "10.16"):
            assert r["tensorrt"][v]["unsupported_ops"] == [], (r["manifest_graph"], v)
