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
"""

from __future__ import annotations

import torch

from ..errors import require


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


def whitening(res: torch.Tensor, shrinkage: float, eps: float = 1e-3, target: str = "pooled") -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (K, C), whiten (K, C, C)) of residuals (N, C, h, w); see the module docstring.

    ``target`` "identity" shrinks towards the average variance times I instead of the pooled
    covariance: at ``shrinkage`` 1 the score is then the plain L2 norm (scaled), at 0 the full
    per-location Mahalanobis distance.
    """
    require(0.0 <= shrinkage <= 1.0, f"score shrinkage {shrinkage}: must be in [0, 1]")
    require(target in SHRINK_TARGETS, f"score shrinkage target {target!r}: choose one of {list(SHRINK_TARGETS)}")
    n, c, h, w = res.shape
    require(n >= 2, f"mahalanobis score: needs at least 2 normal images to fit, got {n}")
    x = res.double().permute(2, 3, 0, 1).reshape(h * w, n, c)  # (K, N, C)
    mean = x.mean(dim=1, keepdim=True)
    xc = x - mean
    cov = xc.transpose(1, 2) @ xc / (n - 1)  # (K, C, C)
    pooled = cov.mean(dim=0, keepdim=True)
    scale = torch.diagonal(pooled[0]).mean().clamp_min(1e-12)
    if target == "identity":
        pooled = scale * torch.eye(c, dtype=torch.float64).unsqueeze(0)
    sigma = (1.0 - shrinkage) * cov + shrinkage * pooled
    sigma = sigma + eps * scale * torch.eye(c, dtype=torch.float64)
    chol = torch.linalg.cholesky(sigma)  # (K, C, C), lower
    eye = torch.eye(c, dtype=torch.float64).expand(h * w, c, c)
    inv_l = torch.linalg.solve_triangular(chol, eye, upper=False)  # L^-1
    return mean[:, 0].float(), inv_l.transpose(1, 2).contiguous().float()  # W = L^-T


def fit_head(model, features: torch.Tensor, device, shrinkage: float, target: str = "pooled",
             residual: torch.Tensor | None = None) -> None:
    """Fit the model's ``mahalanobis`` head on the residuals of these normal features
    (``residual``: ``residuals(model, features)`` if the caller already has it)."""
    residual = residual if residual is not None else residuals(model, features, device)
    mean, whiten = whitening(residual, shrinkage, target=target)
    model.head.set_residual_stats(mean.to(device), whiten.to(device))
