"""The paper's losses (ADTR and ADTR+; FCDD-style terms for labelled anomalies).

d = f - f_hat, per location u and channel c.
* normal only:  L_norm = mean_u ||d(u)||^2 / C  (feature MSE)
* phi(u)      = sqrt((mean_c |d(c,u)|)^2 + 1) - 1            (pseudo-Huber)
* pixel labels: L_px  = mean_u[(1-y) phi] - alpha * log(1 - exp(-mean_u[y phi]))
* image labels: q = mean of the top-k phi(u);  L_img = (1-y) q - alpha * y * log(1 - exp(-q))

The anomaly term pushes the reconstruction error *up* on anomalous locations, without bound but
with a vanishing gradient (-log(1-e^-x) -> 0 as x grows), so it cannot blow up.
"""

from __future__ import annotations

import torch

_EPS = 1e-6


def normal_loss(features: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    return torch.mean((features - reconstruction) ** 2)


def pseudo_huber(features: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """phi per location: (N, h, w)."""
    a = (features - reconstruction).abs().mean(dim=1)
    return torch.sqrt(a * a + 1.0) - 1.0


def _push_up(x: torch.Tensor) -> torch.Tensor:
    """-log(1 - exp(-x)), computed stably and finite at x = 0."""
    return -torch.log(-torch.expm1(-x.clamp_min(_EPS)))


def pixel_loss(phi: torch.Tensor, masks: torch.Tensor, alpha: float) -> torch.Tensor:
    """L_px per image, averaged over the batch. ``masks``: (N, h, w) in [0, 1] at the grid size.

    An image with an empty mask contributes only its normal term (its anomaly term would be
    -log(1 - e^0) = inf otherwise).
    """
    y = masks.to(phi.dtype)
    normal_term = ((1 - y) * phi).flatten(1).mean(dim=1)
    anomalous = (y * phi).flatten(1).mean(dim=1)
    has_anomaly = y.flatten(1).amax(dim=1) > 0
    anomaly_term = torch.where(has_anomaly, _push_up(anomalous), torch.zeros_like(anomalous))
    return (normal_term + alpha * anomaly_term).mean()


def image_loss(phi: torch.Tensor, labels: torch.Tensor, alpha: float, top_k: int) -> torch.Tensor:
    """L_img averaged over the batch. ``labels``: (N,) in {0, 1}."""
    flat = phi.flatten(1)
    k = max(1, min(int(top_k), flat.shape[1]))
    q = flat.topk(k, dim=1).values.mean(dim=1)
    y = labels.to(q.dtype)
    return ((1 - y) * q + alpha * y * _push_up(q)).mean()
