"""Where INT8 breaks the backbone: per-stage and per-layer error as the score head sees it.

    python benchmarks/int8_sensitivity.py EXPORT_DIR --data DATASET --out runs/sens [--targets tensorrt,cpu]
        [--calib-count 32] [--images 32] [--top 8]

The anomaly score is the Mahalanobis norm of the residual, so a feature error matters in proportion
to how far it moves a normal location in the head's whitened space: ``e = ||(f_int8 - f) W_k||``
per location k, with W_k the head's whitening matrix (``residual_whiten`` in transformer.onnx). A
normal location's whitened residual has a norm of about sqrt(C) = 13 for C = 176 channels, so
``e`` is read against that; the plain relative error of each backbone stage's channels is reported
beside it.

For each target (``adtr_edge.engine.quantize.TARGETS``), run as its runtime computes it (the
TensorRT form with exact Q/DQ rounding, the CPU form with ONNX Runtime's fused integer kernels): the whole backbone quantised (per stage),
then every quantisable layer quantised *alone* (the others float) with the same calibration images,
and the whole backbone with the ``--top`` most sensitive layers left float, and with the shipped
plan (``--keep-float auto``) left float. Images: the validation
split of the test set (``validation_split``), normals only, so the figure is the error the head adds
to normal frames. Writes ``sensitivity.json`` and ``int8_sensitivity.png`` (bars per layer, coloured
by stage) under ``--out``; the chart in docs/ comes from here.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adtr_edge.data.datasets import load_batch, load_dataset, validation_split  # noqa: E402
from adtr_edge.engine import calibration as calib  # noqa: E402
from adtr_edge.engine import onnx_tools  # noqa: E402
from adtr_edge.engine.quantize import TARGETS, calibration_reader, float_plan, quantize_graph  # noqa: E402
from adtr_edge.fileio import write_json_atomic  # noqa: E402
from adtr_edge.folder import read_export  # noqa: E402

QUANTISABLE = ("Conv", "Add", "Mul", "MatMul", "Gemm", "Clip", "Relu", "Resize", "Concat", "AveragePool", "GlobalAveragePool")


def session(path: Path, exact: bool = False):
    """``exact``: Q/DQ unfused, so the rounding is TensorRT's (the backend does the same for
    ``--target tensorrt`` folders; fused, this CPU's int16 pair sums would saturate)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    if exact:
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def whitening(transformer: Path) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    inits = {i.name: i for i in onnx.load(str(transformer)).graph.initializer}
    name = next((k for k in inits if "residual_whiten" in k), None)
    if name is None:
        sys.exit(f"{transformer}: no residual_whiten initialiser (this study needs a mahalanobis head)")
    return numpy_helper.to_array(inits[name])  # (K, C, C)


def stage_channels(meta: dict) -> list[int]:
    """Channels of each backbone stage in the feature stack (timm's feature_info; no weights needed)."""
    import timm

    m = meta["model"]
    net = timm.create_model(m["backbone"], pretrained=False, features_only=True, out_indices=tuple(m["stages"]))
    return list(net.feature_info.channels())


def errors(f_ref: np.ndarray, f_q: np.ndarray, W: np.ndarray, stage_slices: list[slice]) -> dict:
    d = (f_q - f_ref).reshape(f_ref.shape[0], f_ref.shape[1], -1).transpose(2, 0, 1)  # (K, N, C)
    whitened = np.linalg.norm(np.matmul(d, W), axis=2)  # (K, N)
    rel = [float(np.linalg.norm(f_q[:, s] - f_ref[:, s]) / np.linalg.norm(f_ref[:, s])) for s in stage_slices]
    return {"whitened_mean": float(whitened.mean()), "whitened_p99": float(np.percentile(whitened, 99)), "stage_relative": rel}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("export_dir")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--targets", default="tensorrt,cpu")
    ap.add_argument("--calib-count", type=int, default=32)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--top", type=int, default=8)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    export = read_export(Path(args.export_dir), purpose="quantize")
    spec = export.meta.preprocess
    bb_path = export.graph_file("backbone")
    W = whitening(export.graph_file("transformer"))
    model = onnx_tools.load(bb_path)
    del model.metadata_props[:]
    layers = [n.name for n in model.graph.node if n.op_type == "Conv"]
    channels = stage_channels(export.meta.raw)
    test = load_dataset(args.data, "test")
    val, _ = validation_split(test)
    normals = [i for i in val if test.labels[i] == 0][: args.images]
    x = np.concatenate([load_batch(test, normals[s:s + 8], spec)[0] for s in range(0, len(normals), 8)])
    paths = calib.calibration_images(Path(args.data) / "train" / "good", args.calib_count)
    batches = calib.backbone_batches(paths, spec, 8)
    f_ref = session(bb_path).run(None, {"images": x})[0]
    bounds = np.cumsum([0] + list(channels))
    stage_slices = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
    result = {"command": " ".join(sys.argv), "images": len(normals), "calib_images": len(paths), "layers": layers,
              "stage_channels": list(channels), "normal_whitened_norm": float(np.sqrt(W.shape[1])), "targets": {}}
    with tempfile.TemporaryDirectory(prefix="sens-") as tmp:
        src = Path(tmp) / "bb.onnx"
        import onnx

        onnx.save(model, str(src))
        exclude = onnx_tools.sensitive_nodes(model)

        def run(target: str, only=None, keep_float=()):
            dst = Path(tmp) / "q.onnx"
            settings = dict(TARGETS[target]["backbone"])
            if only is not None and settings["ops"] is None:
                settings["ops"] = list(QUANTISABLE)
            quantize_graph(src, dst, settings, list(exclude) + list(keep_float), calibration_reader("images", batches), only=only)
            return errors(f_ref, session(dst, exact=target == "tensorrt").run(None, {"images": x})[0], W, stage_slices)

        for target in [t.strip() for t in args.targets.split(",") if t.strip()]:
            t0 = time.perf_counter()
            whole = run(target)
            print(f"{target}: whole backbone: whitened error {whole['whitened_mean']:.2f} (p99 {whole['whitened_p99']:.2f}), "
                  f"stage relative {[round(r, 4) for r in whole['stage_relative']]}", flush=True)
            per_layer = {}
            for i, name in enumerate(layers):
                per_layer[name] = run(target, only=[name])
                print(f"  [{i + 1}/{len(layers)}] {name}: {per_layer[name]['whitened_mean']:.3f}", flush=True)
            ranked = sorted(layers, key=lambda n: -per_layer[n]["whitened_mean"])
            kept = ranked[: args.top]
            mixed = run(target, keep_float=kept)
            auto_nodes = float_plan(model, "auto", export.meta.raw["features"]["stages"], target)
            auto = run(target, keep_float=auto_nodes)
            print(f"{target}: top {args.top} float: whitened error {mixed['whitened_mean']:.2f}; --keep-float auto "
                  f"({len(auto_nodes)} nodes): {auto['whitened_mean']:.2f}; {time.perf_counter() - t0:.0f} s", flush=True)
            result["targets"][target] = {"whole": whole, "per_layer": per_layer, "ranked": ranked, "top_float": kept, "mixed": mixed,
                                         "auto_nodes": auto_nodes, "auto": auto}
    write_json_atomic(out / "sensitivity.json", result)
    plot(result, out / "int8_sensitivity.png")
    print(f"wrote {out / 'sensitivity.json'} and {out / 'int8_sensitivity.png'}")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = result["targets"]
    layers = result["layers"]
    fig, axes = plt.subplots(len(targets), 1, figsize=(12, 3.2 * len(targets)), squeeze=False)
    for ax, (target, r) in zip(axes[:, 0], targets.items()):
        vals = [r["per_layer"][n]["whitened_mean"] for n in layers]
        ax.bar(range(len(layers)), vals, color="tab:blue")
        for i, n in enumerate(layers):
            if n in r["top_float"]:
                ax.bar(i, vals[i], color="tab:red")
        ax.axhline(r["whole"]["whitened_mean"], color="k", ls="--", lw=1, label=f"whole backbone INT8: {r['whole']['whitened_mean']:.2f}")
        ax.axhline(r["mixed"]["whitened_mean"], color="tab:red", ls=":", lw=1,
                   label=f"red layers kept float: {r['mixed']['whitened_mean']:.2f}")
        ax.axhline(r["auto"]["whitened_mean"], color="tab:green", ls="-.", lw=1,
                   label=f"--keep-float auto (stem + blocks 0-1 float): {r['auto']['whitened_mean']:.2f}")
        ax.set_title(f"--target {target}: whitened feature error with one layer INT8 (normal residual norm ~ {result['normal_whitened_norm']:.0f})")
        ax.set_ylabel("mean ||dF W||")
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels([n.replace("/cnn/", "").replace("/Conv", "")[-22:] for n in layers], rotation=90, fontsize=6)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
