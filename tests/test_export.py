import json

import numpy as np
import onnx
import pytest
import torch

from adtr_edge.errors import AdtrError
from adtr_edge.export.onnx_export import export_checkpoint, graph_digest
from adtr_edge.metadata import read_onnx_metadata
from adtr_edge.train.checkpoint import load_checkpoint

ort = pytest.importorskip("onnxruntime")

# Tolerances: FP32 on the CPU, same math in a different order. Features are standardised (unit
# scale), maps are L2 norms of ~C unit-scale differences.
ATOL_FEATURES = 1e-4
RTOL_MAP = 1e-4


def _ort(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("opset", [17, 16])
@pytest.mark.parametrize("batch", [1, 5])
def test_onnx_matches_pytorch(tmp_path, trained_checkpoint, exported_model, opset, batch):
    folder = exported_model if opset == 17 else tmp_path / "o16"
    if opset != 17:
        export_checkpoint(trained_checkpoint, folder, opset=opset)
    model, _ = load_checkpoint(trained_checkpoint)
    x = np.random.default_rng(batch).integers(0, 256, (batch, 64, 64, 3), dtype=np.uint8)
    feats = _ort(folder / "backbone.onnx").run(None, {"images": x})[0]
    amap, score = _ort(folder / "transformer.onnx").run(None, {"features": feats})
    with torch.no_grad():
        tf = model.backbone(torch.from_numpy(x)).numpy()
        tmap, tscore = (t.numpy() for t in model(torch.from_numpy(x)))
    np.testing.assert_allclose(feats, tf, atol=ATOL_FEATURES)
    np.testing.assert_allclose(amap, tmap, rtol=RTOL_MAP, atol=1e-4)
    np.testing.assert_allclose(score, tscore, rtol=RTOL_MAP, atol=1e-4)
    ops = {n.op_type for n in onnx.load(str(folder / "transformer.onnx")).graph.node}
    assert ("LayerNormalization" in ops) == (opset >= 17)


def test_metadata_and_manifest(exported_model):
    manifest = json.loads((exported_model / "manifest.json").read_text())
    assert manifest["kind"] == "onnx" and set(manifest["graphs"]) == {"backbone", "transformer"}
    for name in ("backbone", "transformer"):
        proto = onnx.load(str(exported_model / f"{name}.onnx"))
        meta = read_onnx_metadata(proto)
        assert meta.graph == name
        assert meta.raw["graph_sha256"] == graph_digest(proto) == manifest["graphs"][name]["graph_sha256"]
        assert meta.input_size == (64, 64) and meta.grid == (8, 8)
        assert meta.preprocess.color == "BGR" and meta.preprocess.layout == "NHWC"
        assert meta.thresholds.threshold > 0
        inp = proto.graph.input[0]
        assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic batch survived
    bb = onnx.load(str(exported_model / "backbone.onnx"))
    assert bb.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8


def test_export_refuses_existing_and_bad_opset(tmp_path, trained_checkpoint, exported_model):
    with pytest.raises(AdtrError, match="--force"):
        export_checkpoint(trained_checkpoint, exported_model)
    with pytest.raises(AdtrError, match="--opset 9"):
        export_checkpoint(trained_checkpoint, tmp_path / "x", opset=9)
    with pytest.raises(AdtrError, match="not found"):
        export_checkpoint(tmp_path / "missing", tmp_path / "y")
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())
