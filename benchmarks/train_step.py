"""Seconds per training step of the reconstruction transformer, for a few configurations, side by side.

    OMP_NUM_THREADS=1 python benchmarks/train_step.py

One batch of 16 random standardised feature maps (176 channels, 16x16 grid, Lite0 at 256 px),
AdamW, forward + backward + step, after one warm-up step. Shows what dropout, heads, width, depth
and the neighbour mask cost on a CPU (docs/benchmarks.md section 1.2), and what drawing the feature
jitter costs for the default shape, isotropic against covariance-shaped (section 1.3, what context can predict).
"""

from __future__ import annotations

import sys
import time

import torch

from adtr_edge.config import ModelConfig
from adtr_edge.model.adtr import ReconstructionTransformer
from adtr_edge.train.loop import covariance_jitter_shape, feature_jitter

VARIANTS = {
    "d128 2+2, dropout 0.1": dict(d_model=128, dim_feedforward=512, num_encoder_layers=2, num_decoder_layers=2, dropout=0.1),
    "d128 2+2, dropout 0": dict(d_model=128, dim_feedforward=512, num_encoder_layers=2, num_decoder_layers=2, dropout=0.0),
    "d128 2+2, dropout 0, mask 3x3, sine (default)": dict(d_model=128, dim_feedforward=512, num_encoder_layers=2,
                                                           num_decoder_layers=2, dropout=0.0, neighbor_mask=3, pos_embed="sine"),
    "d128 1+1, dropout 0, mask 3x3, sine (fast)": dict(d_model=128, dim_feedforward=512, num_encoder_layers=1,
                                                        num_decoder_layers=1, dropout=0.0, neighbor_mask=3, pos_embed="sine"),
    "d256 2+2, dropout 0, mask 3x3, sine": dict(d_model=256, dim_feedforward=1024, num_encoder_layers=2,
                                                 num_decoder_layers=2, dropout=0.0, neighbor_mask=3, pos_embed="sine"),
}


def seconds_per_step(cfg: ModelConfig, steps: int, jitter: str | None = None) -> float:
    """``jitter``: None, "isotropic" or "covariance" (drawn every step, at 1.0, as training does)."""
    torch.manual_seed(0)
    model = ReconstructionTransformer(cfg, 176).train()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    f = torch.randn(16, 176, *cfg.grid)
    shape = covariance_jitter_shape(torch.randn(200, 176, *cfg.grid)) if jitter == "covariance" else None
    g = torch.Generator().manual_seed(0)
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()
        noise = feature_jitter(f, 1.0, g, shape) if jitter else None
        loss = ((model(f, noise) - f) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    print(f"{torch.get_num_threads()} torch threads, batch 16, {steps} steps each")
    print("| variant | s per step |\n|---|---|")
    for name, kw in VARIANTS.items():
        print(f"| {name} | {seconds_per_step(ModelConfig(**kw), steps):.2f} |", flush=True)
    default = ModelConfig(**VARIANTS["d128 2+2, dropout 0, mask 3x3, sine (default)"])
    for jitter in ("isotropic", "covariance", "isotropic", "covariance"):  # interleaved: the machine is noisy
        print(f"| default, {jitter} jitter 1.0 | {seconds_per_step(default, steps, jitter):.3f} |", flush=True)


if __name__ == "__main__":
    main()
