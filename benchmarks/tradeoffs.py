"""Input size and backbone-stage trade-offs: parameters, FLOPs and ONNX Runtime latency.

    python benchmarks/tradeoffs.py [--rounds 4] [--iters 3] [--threads N] [--json FILE] [--presets default@256,fast@224,...]

Fresh untrained-but-real models (ImageNet weights, the head's statistics left at identity) are
exported for each configuration. Without ``--presets``: ModelConfig's defaults (Lite0, 4+4 layers)
at 224 vs 256 (stages 1,2,3) and, at 256, stages (1,2,3) vs (2,3) vs (1,2,3,4). With ``--presets``:
each named training preset (its backbone and architecture) at each input size, e.g. to find the
size at which ``fast`` costs half of ``default``. Accuracy is not measured here; latency is batch
1, both graphs, interleaved across configurations.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx

from adtr_edge.bench import camera_frame, count_graph_flops, interleaved, scripts
from adtr_edge.config import ModelConfig, apply_preset, preset_backbone
from adtr_edge.metadata import GRAPHS
from adtr_edge.preprocessing import PreprocessSpec, prepare_batch

CONFIGS = {
    "224, stages 1,2,3": ModelConfig(input_size=(224, 224)),
    "256, stages 1,2,3 (default)": ModelConfig(),
    "256, stages 2,3": ModelConfig(stages=(2, 3)),
    "256, stages 1,2,3,4": ModelConfig(stages=(1, 2, 3, 4)),
}


def preset_configs(spec: str) -> dict[str, ModelConfig]:
    """``"default@256,fast@224"`` -> {label: the preset's model config at that input size}."""
    configs = {}
    for item in [x.strip() for x in spec.split(",") if x.strip()]:
        preset, _, size = item.partition("@")
        model_over, _ = apply_preset(preset, {}, {})
        side = int(size) if size else 256
        configs[f"{preset} at {side} px"] = ModelConfig.for_backbone(preset_backbone(preset), input_size=(side, side), **model_over)
    return configs


def graph_parameters(path: Path) -> int:
    """Weights stored in the graph (float initializers), i.e. what the deployed model carries."""
    model = onnx.load(str(path))
    return int(sum(np.prod(t.dims) for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--presets", default=None, help="comma list of PRESET@SIZE (e.g. default@256,fast@224) instead of the fixed set")
    scripts.add_common_args(ap)
    args, threads = scripts.parse_and_start(ap, argv)
    rows, runners = {}, {}
    for name, cfg in (preset_configs(args.presets) if args.presets else CONFIGS).items():
        print(f"exporting {name} ...", flush=True)
        _, export = scripts.make_export(cfg, args.work)
        sb = scripts.ort_session(export / "backbone.onnx", threads)
        st = scripts.ort_session(export / "transformer.onnx", threads)
        images = prepare_batch([camera_frame()], PreprocessSpec(height=cfg.input_size[0], width=cfg.input_size[1]))
        runners[name] = (lambda sb=sb, st=st, images=images:
                         st.run(None, {"features": sb.run(None, {"images": images})[0]}))
        feats = sb.run(None, {"images": images})[0]
        rows[name] = {"export": str(export), "channels": int(feats.shape[1]), "grid": list(feats.shape[2:]),
                      "params": {g: graph_parameters(export / f"{g}.onnx") for g in GRAPHS},
                      "gflops": {g: count_graph_flops(export / f"{g}.onnx").total / 1e9 for g in GRAPHS}}
    print(f"\ntiming: batch 1, both graphs, {args.rounds} rounds x {args.iters} iterations, interleaved; threads {threads}",
          flush=True)
    samples = interleaved(runners, args.rounds, args.iters, warmup=1)
    print("\n| configuration | channels | grid | params backbone / transformer (M) | GFLOPs backbone / transformer | "
          "ms p50 (p95) | img/s |\n|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        a = np.asarray(samples[name])
        r["ms"] = {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "mean": float(a.mean())}
        p, f = r["params"], r["gflops"]
        print(f"| {name} | {r['channels']} | {r['grid'][0]}x{r['grid'][1]} | {p['backbone'] / 1e6:.2f} / {p['transformer'] / 1e6:.2f} | "
              f"{f['backbone']:.3f} / {f['transformer']:.3f} | {r['ms']['p50']:.1f} ({r['ms']['p95']:.1f}) | {1e3 / r['ms']['p50']:.2f} |")
    return scripts.finish(args, {"threads": threads, "configs": rows})


if __name__ == "__main__":
    sys.exit(main(sys.argv))
