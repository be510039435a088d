"""Would quantisation-aware fine-tuning let the whole backbone run in INT8? (issue #11 item 5, a probe)

    python benchmarks/int8_distill.py runs/l2/val-default/adtr-default --data ../shared/data/magnetic_tile \
        --steps 100 --lr 1e-4 --time-fp32 runs/deploy-mt6/onnx-fp32 --json runs/int8-distill.json

The shipped plan (``--keep-float auto``) leaves the stem and the blocks before the first feature
stage float. This probe asks whether feature distillation could put them in INT8 too:
1. the backbone is fake-quantised in PyTorch the way ``TARGETS["tensorrt"]`` quantises it (every
   Conv's input per tensor, symmetric int8, scale from the 99.99th percentile of |x| over the first
   64 training images, as ONNX Runtime's percentile calibration; weights per output channel,
   symmetric, max |w| / 127; straight-through rounding), and the relative error of the standardised
   features against FP32 on 32 held-out training normals is measured for: everything INT8, weights
   only, activations only, and the shipped plan;
2. a copy with everything INT8 is fine-tuned for ``--steps`` batches of 8 training normals to match
   the FP32 features (mean squared error of the standardised features; BatchNorm statistics frozen);
3. with ``--time-fp32 FOLDER``, the backbone of that FP32 export is quantised for ``--target cpu``
   with ``--keep-float none`` and ``auto`` and both are timed against FP32 (ONNX Runtime, one thread,
   CPU time, interleaved): what putting the float layers in INT8 would be worth on this CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.utils.parametrize as parametrize

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _models import ort_session, random_feed  # noqa: E402

from adtr_edge.bench.timing import interleaved_wall_cpu  # noqa: E402
from adtr_edge.data.datasets import load_batch, load_dataset  # noqa: E402
from adtr_edge.engine import calibration as calib  # noqa: E402
from adtr_edge.engine.quantize import auto_float_modules, quantize_export  # noqa: E402
from adtr_edge.fileio import write_json_atomic  # noqa: E402
from adtr_edge.preprocessing import preprocess_spec  # noqa: E402
from adtr_edge.train.checkpoint import load_checkpoint  # noqa: E402
from adtr_edge.train.loop import split_normals  # noqa: E402

PERCENTILE = 99.99


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round forward, identity backward (the straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


class WeightInt8(nn.Module):
    """Per-output-channel symmetric int8 weights (a parametrisation of Conv2d.weight). Per-channel
    scaling commutes with BatchNorm folding, so this equals quantising the folded weight."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        s = w.detach().abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12) / 127
        return round_ste(w / s).clamp(-127, 127) * s


def activation_ranges(backbone, images: torch.Tensor, sample: int = 200_000) -> dict[str, float]:
    """99.99th percentile of |input| of every Conv over ``images`` (a sample of each batch's values)."""
    seen: dict[str, list] = {}
    g = torch.Generator().manual_seed(0)

    def grab(name):
        def hook(_m, inp):
            v = inp[0].detach().abs().flatten()
            seen.setdefault(name, []).append(v[torch.randint(0, v.numel(), (min(sample, v.numel()),), generator=g)])
        return hook

    hooks = [m.register_forward_pre_hook(grab(n)) for n, m in backbone.cnn.named_modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        for i in range(0, len(images), 8):
            backbone.raw_features(images[i:i + 8])
    for h in hooks:
        h.remove()
    return {n: float(np.percentile(torch.cat(v).numpy(), PERCENTILE)) for n, v in seen.items()}


def fake_quantised(backbone, ranges: dict[str, float], *, weights=True, activations=True, float_modules=()):
    """A copy of ``backbone`` with its Conv layers fake-quantised (those in ``float_modules`` left float)."""
    student = copy.deepcopy(backbone)
    for name, m in student.cnn.named_modules():
        if not isinstance(m, nn.Conv2d) or any(name == f or name.startswith(f + ".") for f in float_modules):
            continue
        if activations:
            scale = ranges[name] / 127
            m.register_forward_pre_hook(lambda _m, inp, s=scale: (round_ste(torch.clamp(inp[0] / s, -128, 127)) * s,))
        if weights:
            parametrize.register_parametrization(m, "weight", WeightInt8())
    return student


def relative_error(teacher, student, images: torch.Tensor) -> float:
    with torch.no_grad():
        a, b = teacher(images), student(images)
    return float((a - b).norm() / a.norm())


def distil(teacher, student, train_set, fit_idx, spec, steps: int, lr: float, held_out, log_every: int = 25) -> list:
    student.train()
    params = [p for p in student.cnn.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    rng, curve, t0 = np.random.default_rng(0), [], time.perf_counter()
    for step in range(1, steps + 1):
        x = torch.from_numpy(load_batch(train_set, rng.choice(fit_idx, 8, replace=False).tolist(), spec)[0])
        with torch.no_grad():
            target = teacher(x)
        loss = ((student(x) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % log_every == 0 or step == steps:
            curve.append({"step": step, "loss": float(loss.detach()), "held_out_relative_error": relative_error(teacher, student, held_out),
                          "seconds": round(time.perf_counter() - t0, 1)})
            print(json.dumps(curve[-1]), flush=True)
    return curve


def time_cpu_plans(fp32: Path, calib_images: Path, rounds: int = 15) -> dict:
    """CPU ms of the FP32 backbone and of the ``--target cpu`` backbone with nothing / the auto plan float."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"fp32": fp32 / "backbone.onnx"}
        for plan in ("none", "auto"):
            out = quantize_export(fp32, calib_images, Path(tmp) / plan, ["backbone"], 64, 8, log=lambda *_: None, target="cpu",
                                  keep_float=plan)
            paths[f"cpu, keep-float {plan}"] = out / "backbone.onnx"
        sessions = {k: ort_session(p, threads=1) for k, p in paths.items()}
        feeds = {k: random_feed(s) for k, s in sessions.items()}  # the same seed: the same image for each
        _, cpu = interleaved_wall_cpu({k: (lambda s=s, f=feeds[k]: s.run(None, f)) for k, s in sessions.items()}, rounds, 1, warmup=3)
    return {k: round(float(np.median(v)), 2) for k, v in cpu.items()}

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--time-fp32", type=Path, default=None, help="FP32 export folder whose backbone is timed with each plan")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.manual_seed(0)

    model, ckpt = load_checkpoint(args.checkpoint)
    spec = preprocess_spec(ckpt.model_config)
    teacher = model.backbone.eval()
    calib_dir = args.data / "train" / "good"
    images = torch.from_numpy(np.concatenate(calib.backbone_batches(calib.calibration_images(calib_dir, 64), spec, 8)))
    train_set = load_dataset(args.data, "train")
    fit_idx, val_idx = split_normals(train_set, ckpt.train_config)
    held_out = torch.from_numpy(load_batch(train_set, val_idx[:32], spec)[0])
    ranges = activation_ranges(teacher, images)

    errors = {
        "everything INT8": relative_error(teacher, fake_quantised(teacher, ranges), held_out),
        "weights only": relative_error(teacher, fake_quantised(teacher, ranges, activations=False), held_out),
        "activations only": relative_error(teacher, fake_quantised(teacher, ranges, weights=False), held_out),
        "shipped plan (stem, blocks 0-1 float)": relative_error(
            teacher, fake_quantised(teacher, ranges, float_modules=auto_float_modules(ckpt.model_config.stages)), held_out),
    }
    print(json.dumps({"relative_feature_error": errors}), flush=True)
    curve = distil(teacher, fake_quantised(teacher, ranges), train_set, fit_idx, spec, args.steps, args.lr, held_out)
    timing = time_cpu_plans(args.time_fp32, calib_dir) if args.time_fp32 else None
    if timing:
        print(json.dumps({"cpu_backbone_ms": timing}), flush=True)
    if args.json:
        write_json_atomic(args.json, {"command": " ".join(sys.argv), "relative_feature_error": errors, "distillation": curve,
                                      "cpu_backbone_ms": timing})


if __name__ == "__main__":
    main()
