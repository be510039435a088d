"""Training-free baselines on the *same* standardised backbone features as ADTR.

They answer "does the transformer earn its keep?": if a per-position mean template scores like
ADTR, the model learned the mean rather than to reconstruct its input.

* mean template: ||f(u) - mean_train f(u)|| per location;
* Gaussian (PaDiM-style): Mahalanobis distance to a per-location Gaussian (shrunk covariance);
* 1-NN: distance from each test patch to its nearest training patch anywhere (PatchCore without
  the coreset; a random subsample of the bank when it is large).

Each returns a per-location map (N, 1, h, w); ``AnomalyHead.from_grid_map`` turns it into the same
anomaly map and image score as ADTR's, so only the per-location score differs.
"""

from __future__ import annotations

import torch


def mean_template(train: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    mean = train.mean(dim=0, keepdim=True)
    return (test - mean).pow(2).sum(dim=1, keepdim=True).sqrt()


def gaussian(train: torch.Tensor, test: torch.Tensor, shrinkage: float = 0.01, chunk: int = 64) -> torch.Tensor:
    n, c, h, w = train.shape
    x = train.double().permute(2, 3, 0, 1).reshape(h * w, n, c)  # (K, N, C)
    mean = x.mean(dim=1, keepdim=True)
    xc = x - mean
    cov = xc.transpose(1, 2) @ xc / max(1, n - 1) + shrinkage * torch.eye(c, dtype=torch.float64)
    prec = torch.linalg.inv(cov)  # (K, C, C)
    out = []
    for s in range(0, test.shape[0], chunk):
        t = test[s:s + chunk].double().permute(2, 3, 0, 1).reshape(h * w, -1, c) - mean  # (K, n, C)
        d2 = torch.einsum("knc,kcd,knd->kn", t, prec, t).clamp_min(0)
        out.append(d2.sqrt().reshape(h, w, -1).permute(2, 0, 1).unsqueeze(1).float())
    return torch.cat(out)


def nearest_neighbour(train: torch.Tensor, test: torch.Tensor, max_bank: int = 50_000, seed: int = 0,
                      chunk: int = 1024) -> torch.Tensor:
    from ..train.memory_bank import cells, nearest_distance

    bank = cells(train)
    if bank.shape[0] > max_bank:
        g = torch.Generator().manual_seed(seed)
        bank = bank[torch.randperm(bank.shape[0], generator=g)[:max_bank]]
    n, _, h, w = test.shape
    return nearest_distance(cells(test), bank, chunk=chunk).reshape(n, h, w).unsqueeze(1)


BASELINES = {"mean-template": mean_template, "gaussian": gaussian, "1-nn": nearest_neighbour}
