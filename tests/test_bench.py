"""adtr_edge.bench: FLOP counting (hand-computed), report schema, Markdown, CLI. Never asserts speed."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from adtr_edge.bench import (BenchSettings, count_flops, measure_gemm_peak, resolve_targets, run_bench, summarize,
                             to_markdown)
from adtr_edge.errors import AdtrError


def _init(name, shape):
    return numpy_helper.from_array(np.zeros(shape, dtype=np.float32), name)


def tiny_graph() -> onnx.ModelProto:
    """x (batch,3,8,8) -> Conv 3->4 3x3 pad 1 -> Relu -> grouped Conv 4->4 (group 2) 3x3 stride 2 pad 1
    -> Flatten -> Gemm 64->10 (transB); and a broadcast MatMul (batch,2,5,6) x (6,7)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])
    t = helper.make_tensor_value_info("t", TensorProto.FLOAT, ["batch", 2, 5, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 2, 5, 7])
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], group=2, strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["c2"], ["f"]),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], transB=1),
        helper.make_node("MatMul", ["t", "wm"], ["z"]),
    ]
    inits = [_init("w1", (4, 3, 3, 3)), _init("b1", (4,)), _init("w2", (4, 2, 3, 3)), _init("wg", (10, 64)),
             _init("bg", (10,)), _init("wm", (6, 7))]
    graph = helper.make_graph(nodes, "tiny", [x, t], [y, z], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_count_flops_hand_computed():
    model = tiny_graph()
    # conv1: out 1x4x8x8 = 256 elements, each 3*3*3 = 27 MACs -> 2*256*27 = 13824
    # conv2 (group 2, stride 2): out 1x4x4x4 = 64 elements, each (4/2)*3*3 = 18 MACs -> 2304
    # gemm: M=1, K=64, N=10 -> 2*640 = 1280
    # matmul: out 1x2x5x7 = 70 elements, K=6 -> 840
    fc = count_flops(model, batch=1)
    assert fc.by_op == {"Conv": 13824 + 2304, "Gemm": 1280, "MatMul": 840}
    assert fc.total == 13824 + 2304 + 1280 + 840
    assert fc.counted_nodes == 4 and fc.unresolved == []
    assert fc.ignored_ops == {"Relu": 1, "Flatten": 1}


def test_count_flops_scales_with_batch_and_leaves_model_untouched():
    model = tiny_graph()
    before = model.SerializeToString()
    assert count_flops(model, batch=3).total == 3 * count_flops(model, batch=1).total
    assert model.SerializeToString() == before
    with pytest.raises(AdtrError, match="batch"):
        count_flops(model, batch=0)


def test_count_flops_reports_unresolved_shapes():
    # A MatMul whose operand shapes cannot be inferred is listed, not silently counted as 0.
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, None)
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, None)
    c = helper.make_tensor_value_info("c", TensorProto.FLOAT, None)
    g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"], name="mm")], "g", [a, b], [c])
    fc = count_flops(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    assert fc.total == 0 and fc.unresolved == ["mm"]


def test_summarize_and_gemm_peak():
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert s["count"] == 4 and s["mean"] == 2.5 and s["p50"] == 2.5 and s["min"] == 1.0
    assert summarize([])["mean"] is None
    for engine in ("numpy", "onnxruntime"):
        peak = measure_gemm_peak(64, repeats=2, engine=engine)
        assert peak["engine"] == engine and peak["gflops"] > 0
    with pytest.raises(AdtrError, match="GEMM"):
        measure_gemm_peak(64, engine="cublas")


def test_missing_or_wrong_model_dir(tmp_path):
    with pytest.raises(AdtrError, match="not found"):
        resolve_targets([tmp_path / "nope"])
    with pytest.raises(AdtrError, match="manifest.json"):
        resolve_targets([tmp_path])
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(AdtrError, match="not valid JSON"):
        resolve_targets([tmp_path])


def _positive(x):
    return isinstance(x, (int, float)) and x > 0


def test_bench_report_schema_on_exported_model(exported_model, tmp_path):
    export = exported_model
    with pytest.raises(AdtrError, match="runs on onnxruntime"):
        resolve_targets([export], "torch")
    settings = BenchSettings(batches=(1, 2), warmup=1, iters=2, threads=1, frame_size=(48, 64), gemm_n=64)
    report = run_bench([export], "all", settings, command="test")
    assert report["schema"] == "adtr-edge-bench/1"
    assert {"date", "command", "machine", "settings", "gemm_peak", "flops_note", "runs"} <= set(report)
    assert report["machine"]["python"] and report["machine"]["usable_cores"] >= 1
    assert _positive(report["gemm_peak"]["gflops"])
    (run,) = report["runs"]
    assert run["status"] == "ok" and run["backend"] == "onnxruntime" and run["precision"] == "fp32"
    assert "CPUExecutionProvider" in run["providers"]
    f = run["flops"]
    assert _positive(f["backbone"]["total"]) and _positive(f["transformer"]["total"])
    assert f["per_frame"] == f["backbone"]["total"] + f["transformer"]["total"]
    assert f["backbone"]["unresolved"] == [] and f["transformer"]["unresolved"] == []
    assert [b["batch"] for b in run["batches"]] == [1, 2]
    for b in run["batches"]:
        assert b["status"] == "ok"
        for stage in ("preprocess", "backbone", "transformer", "postprocess", "total"):
            st = b["stages_ms"][stage]
            assert st["count"] == 2 and _positive(st["mean"]) and st["p95"] >= st["p50"] > 0
        assert _positive(b["throughput_ips"]) and _positive(b["per_image_ms"])
        assert _positive(b["achieved_gflops"]["model"]) and _positive(b["achieved_gflops"]["fraction_of_gemm_peak"])
    mem = run["memory"]
    assert _positive(mem["rss_peak_mb"]) and mem["rss_delta_mb"] >= 0 and _positive(mem["process_peak_rss_mb"])
    json.dumps(report)  # serialisable as is

    md = to_markdown(report)
    assert md.startswith("# adtr-edge bench") and "| model | batch |" in md
    assert md.count(f"| {run['label']} |") >= 2 + 1  # two batch rows + the FLOPs row (+ memory row)


def test_torch_flop_counter_agrees_with_onnx_count(exported_model, trained_checkpoint):
    """The ONNX count (Conv/MatMul/Gemm) and torch's own counter measure the same model."""
    export, ckpt = exported_model, trained_checkpoint
    from adtr_edge.bench import TorchBackend, count_graph_flops

    torch_flops = TorchBackend(ckpt, threads=1).count_flops()
    onnx_flops = {g: count_graph_flops(export / f"{g}.onnx").total for g in ("backbone", "transformer")}
    assert onnx_flops["transformer"] == pytest.approx(torch_flops["transformer"], rel=0.02)
    # Eager timm runs every backbone block, also those after the last stage used; the traced graph
    # drops them. So the graph's count is smaller, never larger.
    assert 0 < onnx_flops["backbone"] <= torch_flops["backbone"]


def test_cli_bench_writes_json_and_markdown(exported_model, tmp_path):
    export = exported_model
    from typer.testing import CliRunner

    from adtr_edge.cli import app

    out_json, out_md = tmp_path / "r" / "bench.json", tmp_path / "r" / "bench.md"
    result = CliRunner().invoke(app, ["bench", str(export), "--batch", "1", "--warmup", "0", "--iters", "1",
                                      "--threads", "1", "--frame", "64x48", "--json", str(out_json), "--markdown", str(out_md)])
    assert result.exit_code == 0, result.output
    report = json.loads(out_json.read_text())
    assert report["runs"][0]["batches"][0]["stages_ms"]["total"]["count"] == 1
    assert out_md.read_text().startswith("# adtr-edge bench")
    assert not list((tmp_path / "r").glob(".tmp-*"))


def test_cli_bench_errors(tmp_path):
    from adtr_edge.cli import main

    assert main(["bench", str(tmp_path / "missing")]) == 2
    assert main(["bench", str(tmp_path), "--batch", "0"]) == 2
    assert main(["bench", str(tmp_path), "--backend", "cuda"]) == 2
