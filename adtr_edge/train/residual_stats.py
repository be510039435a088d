"""Statistics of normal reconstruction residuals, for the head's ``mahalanobis`` score.

The residual d = f - f_hat of a normal image is not white noise: some channels are rebuilt worse
than others, some move together, and both differ by location. Scoring ||d|| treats all of that as
anomaly evidence; the Mahalanobis distance under the normal residuals' own covariance does not.

Per location u: mu_u and S_u over the normal images, then
    Sigma_u = (1 - lam) S_u + lam S_pooled + eps I,   S_pooled = mean_u S_u
and W_u = L_u^-T with Sigma_u = L_u L_u^T, so that ||(d_u - mu_u) W_u||^2 is the squared
Mahalanobis distance. ``lam`` = 1 is one shared covariance (few normals); ``lam`` near 0 trusts
each location (many normals). ``eps`` is relative to the average variance, which keeps channels
with near-zero residual variance from dominating the score.

The regional term (``region_grid`` g >= 2) scores the whole image at once: the residual averaged over
g x g regions less the image's own average over them, one vector of C g^2 values, against the
covariance of those vectors over normal images. A per-location covariance cannot see a faint change
spread over many locations (a long thin crack, a patch of uneven shading); one covariance over how
all regions depart from their image's average does, and a change of the whole image (a codec, the
lighting) leaves it as it was.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import torch

from ..errors import require
from ..model.head import REGION_RANK, region_means


@torch.no_grad()
def reconstruct(model, features: torch.Tensor, device, batch_size: int = 32) -> torch.Tensor:
    """f_hat for standardised features (N, C, h, w), in eval mode, batched, returned on the CPU."""
    model.eval()
    out = [model.transformer(features[s:s + batch_size].to(device)).float().cpu() for s in range(0, len(features), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


def residuals(model, features: torch.Tensor, device, batch_size: int = 32) -> torch.Tensor:
    """f - f_hat, on the CPU."""
    return features.float().cpu() - reconstruct(model, features, device, batch_size) if len(features) else torch.empty(0)


SHRINK_TARGETS = ("pooled", "identity")


def location_covariance(x: torch.Tensor, shrinkage: float = 0.0, target: str = "pooled", eps: float = 1e-3,
                        what: str = "per-location covariance") -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (K, C), lower Cholesky factor L (K, C, C)) of each grid location's covariance of ``x``
    (N, C, h, w), float64: shrunk by ``shrinkage`` towards ``target`` (see ``whitening``), plus
    ``eps`` x the average variance on the diagonal. ``what`` names the caller in errors."""
    require(0.0 <= shrinkage <= 1.0, f"score shrinkage {shrinkage}: must be in [0, 1]")
    require(target in SHRINK_TARGETS, f"score shrinkage target {target!r}: choose one of {list(SHRINK_TARGETS)}")
    n, c, h, w = x.shape
    require(n >= 2, f"{what}: needs at least 2 normal images to fit, got {n}")
    xs = x.double().permute(2, 3, 0, 1).reshape(h * w, n, c)  # (K, N, C)
    mean = xs.mean(dim=1, keepdim=True)
    xc = xs - mean
    cov = xc.transpose(1, 2) @ xc / (n - 1)  # (K, C, C)
    pooled = cov.mean(dim=0, keepdim=True)
    scale = torch.diagonal(pooled[0]).mean().clamp_min(1e-12)
    if target == "identity":
        pooled = scale * torch.eye(c, dtype=torch.float64).unsqueeze(0)
    sigma = (1.0 - shrinkage) * cov + shrinkage * pooled
    sigma = sigma + eps * scale * torch.eye(c, dtype=torch.float64)
    return mean[:, 0], torch.linalg.cholesky(sigma)


def whitening(res: torch.Tensor, shrinkage: float, eps: float = 1e-3, target: str = "pooled") -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (K, C), whiten (K, C, C)) of residuals (N, C, h, w); see the module docstring.

    ``target`` "identity" shrinks towards the average variance times I instead of the pooled
    covariance: at ``shrinkage`` 1 the score is then the plain L2 norm (scaled), at 0 the full
    per-location Mahalanobis distance.
    """
    mean, chol = location_covariance(res, shrinkage, target, eps, what="mahalanobis score")  # (K, C), (K, C, C) lower
    k, c = mean.shape
    eye = torch.eye(c, dtype=torch.float64).expand(k, c, c)
    inv_l = torch.linalg.solve_triangular(chol, eye, upper=False)  # L^-1
    return mean.float(), inv_l.transpose(1, 2).contiguous().float()  # W = L^-T


def region_whitening(res: torch.Tensor, grid: int, shrinkage: float, rank: int = REGION_RANK, eps: float = 1e-3):
    """(mean (D,), basis (D, r'), scale (r',), rest) of the regional term (``AnomalyHead.region_score``)
    for residuals (N, C, h, w): the covariance of their region means, (1 - lam) S + lam s I with s the
    average variance, kept exactly along S's top r' = min(rank, N - 1, D) principal directions
    (scale = 1/sqrt of its variance there) and as lam s + eps s elsewhere (rest = 1/sqrt of that)."""
    require(0.0 <= shrinkage <= 1.0, f"region shrinkage {shrinkage}: must be in [0, 1]")
    n = res.shape[0]
    require(n >= 2, f"regional score: needs at least 2 normal images to fit, got {n}")
    x = region_means(res.double(), grid, tuple(res.shape[-2:]))
    mean = x.mean(dim=0)
    # The principal directions from the SVD of the centred data (N x D), not an eigendecomposition
    # of the D x D covariance (D = 3072 for the default model): N < D, so this is the cheap way.
    _, sv, vh = torch.linalg.svd(x - mean, full_matrices=False)
    var = sv.pow(2) / (n - 1)
    scale_all = (var.sum() / x.shape[1]).clamp_min(1e-12)  # the average variance s
    r = min(rank, n - 1, x.shape[1])
    floor = (shrinkage + eps) * scale_all
    scale = ((1.0 - shrinkage) * var[:r] + floor).rsqrt()
    return mean.float(), vh[:r].T.contiguous().float(), scale.float(), float(floor.rsqrt())


def _head_stats(residual, shrinkage, target, region_grid, region_shrinkage):
    stats = {"residual": whitening(residual, shrinkage, target=target)}
    if region_grid:
        stats["region"] = region_whitening(residual, region_grid, region_shrinkage)
    return stats


@torch.no_grad()
def set_map_stats(head, residual: torch.Tensor, mean: torch.Tensor, whiten: torch.Tensor, batch_size: int = 64) -> None:
    """The per-location statistics of ``head`` and, with ``map_pool``, the pooled part's clip and scale, from
    these normal residuals (every head fit and every candidate head comes through here)."""
    head.set_residual_stats(mean, whiten)
    if not head.map_pool:
        return
    batches = [residual[s:s + batch_size].to(mean.device) for s in range(0, len(residual), batch_size)]
    if head.map_pool_clip:  # the cap first (from the cells' norms alone), then the scale of the clipped part
        local = torch.cat([head.whitened_cells(b)[1] for b in batches]).flatten().double()
        local = local[::max(1, len(local) // 2_000_000)]  # torch.quantile takes at most 2^24 values
        head.set_pool_cap(float(torch.quantile(local, head.map_pool_clip)))
    parts = [head.map_parts(b) for b in batches]
    head.set_pool_scale(*(float(torch.cat([p[i] for p in parts]).mean()) for i in (0, 1)))


def _set_stats(head, stats, residual, device=None) -> None:
    set_map_stats(head, residual, *(t.to(device) if device is not None else t for t in stats["residual"]))
    if "region" in stats:
        head.set_region_stats(*stats["region"])


@torch.no_grad()
def _batched(score, residual: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """``score`` (one of the head's per-image scores) over residuals in batches, as float64 on the CPU."""
    return torch.cat([score(residual[s:s + batch_size]) for s in range(0, len(residual), batch_size)]).double().numpy()


def _scores(head, residual: torch.Tensor, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(map scores, regional scores) of residuals under ``head``, on the CPU."""
    return _batched(head.map_score, residual, batch_size), _batched(head.region_score, residual, batch_size)


def region_term_scores(model, fit_residual: torch.Tensor, residual_sets: list, region_shrinkage: float) -> list:
    """The regional term's raw scores for each residual set, fitted on ``fit_residual`` as ``fit_head``
    fits the shipped one, without its z-normalisation (head selection scores candidates with it:
    ``train.head_select``). The probe head carries no map part (its map is not scored)."""
    from ..model.head import AnomalyHead

    head = AnomalyHead(replace(model.cfg, score="mahalanobis", map_blur=0.0, map_pool=0), model.backbone.channels)
    head.set_region_stats(*region_whitening(fit_residual.float(), model.cfg.region_grid, region_shrinkage))
    return [_batched(head.region_score, r.float()) for r in residual_sets]


def fit_head_for(model, train_cfg, features: torch.Tensor, device, residual: torch.Tensor | None = None) -> None:
    """``fit_head`` with the head settings of a ``TrainConfig`` (shrinkage, target, regional
    shrinkage, seed): what training, its evaluation curve and the benchmarks all fit."""
    fit_head(model, features, device, train_cfg.score_shrinkage, train_cfg.score_target, residual=residual,
             region_shrinkage=train_cfg.region_shrinkage, seed=train_cfg.seed)


def fit_head(model, features: torch.Tensor, device, shrinkage: float, target: str = "pooled",
             residual: torch.Tensor | None = None, region_shrinkage: float = 0.3, folds: int = 5, seed: int = 0) -> None:
    """Fit the model's ``mahalanobis`` head on the residuals of these normal features
    (``residual``: ``residuals(model, features)`` if the caller already has it).

    With a regional term (``region_grid``) the head also needs each term's spread over normal images,
    to put them on one scale. Scored on the images they were fitted on, both would look too normal (the
    regional covariance has 3072 dimensions for 685 images), so the spread comes from ``folds``-fold
    cross-fitting: each fold is scored by statistics fitted without it, as a new normal image would be."""
    residual = (residual if residual is not None else residuals(model, features, device)).float().cpu()
    head, grid = model.head, model.cfg.region_grid
    if grid:
        probe = copy.deepcopy(head).cpu()
        n = len(residual)
        require(n >= 3, f"regional score: needs at least 3 normal images to cross-fit, got {n} (or train with --region-grid 0)")
        folds = min(folds, n)  # leave-one-out on tiny sets
        order = np.random.default_rng(seed).permutation(n)
        scores = np.zeros((2, n))
        for part in np.array_split(order, folds):
            keep = torch.from_numpy(np.setdiff1d(order, part))
            _set_stats(probe, _head_stats(residual[keep], shrinkage, target, grid, region_shrinkage), residual[keep])
            scores[:, part] = _scores(probe, residual[torch.from_numpy(part)])
    _set_stats(head, _head_stats(residual, shrinkage, target, grid, region_shrinkage), residual, device)
    if grid:
        (m0, m1), (s0, s1) = scores.mean(axis=1), scores.std(axis=1).clip(min=1e-6)
        head.set_score_norm(float(m0), float(s0), float(m1), float(s1))
