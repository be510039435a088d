"""How much of a normal location can its context predict at all? A linear decoder from context, under the shipped head.

    python benchmarks/context_probe.py --data ../shared/data/magnetic_tile --cache runs/isz/.features --split val \
        --json runs/context-probe-mt-val.json

Issue #10 asks for a decoder that rebuilds normal features from their context. Under the shipped
Mahalanobis head the trained transformer scores like the per-location mean (docs/benchmarks.md 1.3:
beta 0 vs beta 1). Is that the transformer failing to learn, or is there little in the context that a
per-location covariance does not already discount? This probe answers it without training a network:
each location's features are predicted by one linear map (shared by every location, ridge regression,
fitted in closed form on the fit normals) from the features of a ring of neighbouring cells, and the
residual ``f - f_hat`` is scored by the shipped head (``default`` preset: Mahalanobis, regional score),
refitted on the fit normals, exactly as ADTR's residual is. The reference row is ``f - mu``: the
Gaussian baseline under the same head.

Rings: ``1`` = the 8 neighbours (what the 3x3 neighbour mask hides from ADTR's queries), ``2`` = the
16 cells at Chebyshev distance 2 (what the mask leaves nearest). ``farR``: the mean of every cell at
distance R or more, the part of the image a defect smaller than the window cannot reach. Each is fitted in two spaces: the
standardised features (an L2 loss, as ADTR trains) and each location's whitened features (the
per-location Gaussian's own metric, so the fit spends itself on directions the head weighs). The
ridge strength is chosen by the explained variance on the held-out normals (no defects involved).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accuracy import masks_at, raw_val_feats, scored_from, split_features, summarise  # noqa: E402

from adtr_edge.config import ModelConfig, TrainConfig, apply_preset, preset_backbone  # noqa: E402
from adtr_edge.data.datasets import load_dataset  # noqa: E402
from adtr_edge.evaluate import report_for  # noqa: E402
from adtr_edge.fileio import write_json_atomic  # noqa: E402
from adtr_edge.model import build_model  # noqa: E402
from adtr_edge.preprocessing import preprocess_spec  # noqa: E402
from adtr_edge.train.diagnostics import collapse_figures, make_probe  # noqa: E402
from adtr_edge.train.loop import PROBE_IMAGES, split_normals  # noqa: E402
from adtr_edge.train.residual_stats import fit_head_for  # noqa: E402

RIDGES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # times the mean diagonal of the Gram matrix


def ring_offsets(radius: int) -> list[tuple[int, int]]:
    return [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1) if max(abs(dy), abs(dx)) == radius]


class Far:
    """Far context: the mean of a cell's features over every cell at Chebyshev distance ``radius``
    or more, one C-vector per cell. A defect smaller than the (2 radius - 1)^2 window around a cell
    cannot reach it; what it carries is the image's overall state (its shading, its texture)."""

    def __init__(self, radius: int):
        self.radius, self.window = radius, 2 * radius - 1

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        k, pad = self.window, self.radius - 1
        _, _, h, w = x.shape
        box = lambda t: torch.nn.functional.avg_pool2d(t, k, stride=1, padding=pad, count_include_pad=True) * (k * k)  # noqa: E731
        outside = h * w - box(torch.ones(1, 1, h, w, dtype=x.dtype))
        if float(outside.min()) < 1:
            raise ValueError(f"far {self.radius}: the {k}x{k} window covers the whole {h}x{w} grid")
        return (x.sum(dim=(2, 3), keepdim=True) - box(x)) / outside


def context(x: torch.Tensor, offsets: list[tuple[int, int]] | Far) -> torch.Tensor:
    """(N, C, H, W) centred features -> (N, K*C, H, W): each cell's neighbours at ``offsets``,
    zero (the mean) beyond the border; or, for a ``Far``, the mean of the cells beyond its window."""
    if isinstance(offsets, Far):
        return offsets(x)
    r = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    _, _, h, w = x.shape
    pad = torch.nn.functional.pad(x, (r, r, r, r))
    return torch.cat([pad[:, :, r + dy:r + dy + h, r + dx:r + dx + w] for dy, dx in offsets], dim=1)


def rows_of(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def gram(x: torch.Tensor, offsets, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """X^T X and X^T Y of the context regression, accumulated over image chunks in float64."""
    g = b = None
    for s in range(0, len(x), chunk):
        xs = x[s:s + chunk]
        ctx, y = rows_of(context(xs, offsets)).double(), rows_of(xs).double()
        g = ctx.T @ ctx if g is None else g + ctx.T @ ctx
        b = ctx.T @ y if b is None else b + ctx.T @ y
    return g, b


def predict(x: torch.Tensor, offsets, weight: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    n, c, h, w = x.shape
    out = []
    for s in range(0, n, chunk):
        xs = x[s:s + chunk]
        out.append((rows_of(context(xs, offsets)).double() @ weight).float().reshape(len(xs), h, w, c).permute(0, 3, 1, 2))
    return torch.cat(out)


def explained(x: torch.Tensor, pred: torch.Tensor) -> float:
    return float(1 - (x - pred).pow(2).sum() / x.pow(2).sum())


class Whitening:
    """Each location's Gaussian of the fit normals: z = L^-1 (f - mu), back: f = mu + L z.

    Not ``residual_stats.location_covariance``: this adds an absolute 0.01 to the diagonal, as the
    Gaussian baseline does (``baselines.gaussian``), where that one scales it by the average
    variance; the documented figures (docs/benchmarks.md 1.3, what context can predict) were made with this one, and
    the other moves them in the third decimal."""

    def __init__(self, centred: torch.Tensor, eps: float = 0.01):
        n, c, h, w = centred.shape
        x = centred.double().permute(2, 3, 0, 1).reshape(h * w, n, c)
        cov = x.transpose(1, 2) @ x / (n - 1) + eps * torch.eye(c, dtype=torch.float64)
        self.chol, self.shape = torch.linalg.cholesky(cov), (c, h, w)  # (K, C, C)

    def whiten(self, centred: torch.Tensor) -> torch.Tensor:
        c, h, w = self.shape
        x = centred.double().permute(2, 3, 1, 0).reshape(h * w, c, -1)
        z = torch.linalg.solve_triangular(self.chol, x, upper=False)
        return z.reshape(h, w, c, -1).permute(3, 2, 0, 1).float()

    def colour(self, z: torch.Tensor) -> torch.Tensor:
        c, h, w = self.shape
        x = self.chol @ z.double().permute(2, 3, 1, 0).reshape(h * w, c, -1)
        return x.reshape(h, w, c, -1).permute(3, 2, 0, 1).float()


class LinearContext(torch.nn.Module):
    """f_hat = mu + back(W ctx(into(f))): the fitted predictor as a ``transformer``, so that the
    collapse figures (``diagnostics``) measure it exactly as they measure ADTR."""

    def __init__(self, into, back, mu: torch.Tensor, offsets, weight: torch.Tensor):
        super().__init__()
        self.into, self.back, self.mu, self.offsets, self.weight = into, back, mu, offsets, weight

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mu + self.back(predict(self.into(features), self.offsets, self.weight))


def fit_context(fit: torch.Tensor, held: torch.Tensor, offsets) -> tuple[torch.Tensor, float, dict]:
    """Ridge weights from ``fit``, the strength picked by the explained variance of ``held``."""
    g, b = gram(fit, offsets)
    scale = float(torch.diagonal(g).mean())
    tried = {}
    best = None
    for lam in RIDGES:
        wgt = torch.linalg.solve(g + lam * scale * torch.eye(len(g), dtype=g.dtype), b)
        ev = explained(held, predict(held, offsets, wgt))
        tried[lam] = round(ev, 4)
        if best is None or ev > best[1]:
            best = (wgt, ev, lam)
    return best[0], best[2], tried


def parse_rings(text: str) -> list[tuple[str, int]]:
    """``"1,2,far3"`` -> [("ring", 1), ("ring", 2), ("far", 3)]; a one-line exit on anything else."""
    out = []
    for tok in (t.strip() for t in text.split(",")):
        kind, num = ("far", tok[3:]) if tok.startswith("far") else ("ring", tok)
        if not num.isdigit() or int(num) < 1 or (kind == "far" and int(num) < 2):
            sys.exit(f"--rings {text}: use ring distances of 1 or more and farR with R of 2 or more, e.g. 1,2,far3"
                     " (0 would be the cell itself)")
        out.append((kind, int(num)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--cache", required=True, help="feature cache folder (benchmarks/accuracy.py --cache)")
    ap.add_argument("--split", choices=("val", "test", "all"), default="val")
    ap.add_argument("--preset", default="default", help="whose backbone, input size and head to use")
    ap.add_argument("--input-size", type=int, default=None)
    ap.add_argument("--feature-stride", type=int, default=16)
    ap.add_argument("--rings", default="1,2", help="ring distances, and farR for the mean of the cells at distance R or more")
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    rings = parse_rings(args.rings)
    torch.set_grad_enabled(False)

    m_over, t_over = apply_preset(args.preset, {}, {})
    side = args.input_size or m_over.get("input_size", ModelConfig().input_size)[0]
    base = ModelConfig.for_backbone(preset_backbone(args.preset), input_size=(side, side), feature_stride=args.feature_stride)
    cfg = replace(base, **{k: v for k, v in m_over.items() if k != "input_size"})
    tcfg = TrainConfig(**{**t_over, "device": "cpu"})
    model = build_model(cfg)
    train_set, test = load_dataset(args.data, "train"), load_dataset(args.data, "test")
    fit_idx, val_idx = split_normals(train_set, tcfg)
    test, fit, feats, (mean, std) = split_features(model, cfg, train_set, fit_idx, test, Path(args.cache), args.split)
    held = (raw_val_feats(model, train_set, val_idx, preprocess_spec(cfg), cfg, Path(args.cache)) - mean) / std
    masks = masks_at(test, preprocess_spec(cfg))
    model.backbone.set_feature_stats(mean, std)  # the defect probe's features are standardised like these
    probe_idx = val_idx[:PROBE_IMAGES]
    probe = make_probe(model.backbone, [train_set.image(i) for i in probe_idx], held[:len(probe_idx)], preprocess_spec(cfg),
                       cfg.grid, torch.device("cpu"), seed=tcfg.seed)
    mu = fit.mean(dim=0, keepdim=True)
    white = Whitening(fit - mu)
    spaces = {"standardised": (lambda x: x - mu, lambda p: p),
              "whitened": (lambda x: white.whiten(x - mu), white.colour)}

    def row(name: str, fit_res: torch.Tensor, res: torch.Tensor, extra: dict) -> dict:
        fit_head_for(model, tcfg, None, torch.device("cpu"), residual=fit_res)
        out = [model.head(res[s:s + 32], torch.zeros_like(res[s:s + 32])) for s in range(0, len(res), 32)]  # grad is off (main)
        maps, scores = torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])
        rep = report_for(scored_from(maps, scores, test, masks), None)
        r = {"residual": name, **summarise(rep), **extra,
             "per_defect": {k: {m: round(v[m], 4) for m in ("image_auroc", "pixel_auroc") if v.get(m) is not None}
                            for k, v in rep["per_defect"].items()}}
        print(json.dumps(r), flush=True)
        return r

    rows = [row("f - mu (the Gaussian under the shipped head)", fit - mu, feats - mu, {})]
    for kind, radius in rings:
        offsets = ring_offsets(radius) if kind == "ring" else Far(radius)
        for space, (into, back) in spaces.items():
            t = time.perf_counter()
            f_in, h_in = into(fit), into(held)
            wgt, lam, tried = fit_context(f_in, h_in, offsets)
            predictor = LinearContext(into, back, mu, offsets, wgt)
            fit_hat, test_hat, held_hat = (predictor(v) for v in (fit, feats, held))
            extra = {kind: radius, "cells": len(offsets) if kind == "ring" else "mean beyond the window", "space": space, "ridge": lam, "held_out_explained": tried,
                     **collapse_figures(SimpleNamespace(transformer=predictor, eval=lambda: None), held, mu, probe, torch.device("cpu")),
                     "explained_std_held": round(explained(held - mu, held_hat - mu), 4),
                     "explained_white_held": round(explained(white.whiten(held - mu), white.whiten(held_hat - mu)), 4),
                     "explained_white_fit": round(explained(white.whiten(fit - mu), white.whiten(fit_hat - mu)), 4),
                     "seconds": round(time.perf_counter() - t, 1)}
            what = f"ring {radius}" if kind == "ring" else f"mean of the cells at distance {radius} or more"
            rows.append(row(f"linear context, {what}, fitted {space}", fit - fit_hat, feats - test_hat, extra))
    write_json_atomic(Path(args.json), {"command": " ".join(sys.argv), "split": args.split, "n_fit": len(fit), "n_held": len(held),
                                        "n_test": len(test), "rows": rows})
    print("| residual | image AUROC | pixel AUROC | AUPRO | explained, held-out normals (standardised / whitened) | following | pass-through |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ev = f"{r['explained_std_held']:.3f} / {r['explained_white_held']:.3f} | {r['input_following']:.3f} | {r['defect_pass_through']:.3f}" \
            if "input_following" in r else " | 0 | 0"
        print(f"| {r['residual']} | {r['image_auroc']:.4f} | {r['pixel_auroc']:.4f} | {r['aupro']:.4f} | {ev} |")


if __name__ == "__main__":
    main()
