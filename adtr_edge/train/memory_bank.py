"""A memory bank of normal cells from every grid location, for the location-free ``nearest`` head.

The per-location head asks "is this cell like the normal cells *at this place*?", which only makes
sense when parts sit in one place. Screws, nuts and castings arrive shifted and rotated; there the
question is "is this cell like *any* normal cell?": the distance to its nearest neighbour among the
normal cells of every location (PatchCore, Roth et al. 2022, on our own features).

All the fit normals' cells are too many to carry in a graph (320 images x 256 cells = 82k vectors on
MVTec AD ``screw``), so the bank is a greedy k-centre coreset: each new member is the cell farthest
from every member so far, which keeps the rare normal appearances that a random subsample drops
(PatchCore's argument; the k-centre rule is Sener & Savarese 2018). Distances during the selection
use a fixed random projection to ``PROJECTION`` dimensions (Johnson-Lindenstrauss), as PatchCore does,
so the selection costs O(bank x cells x 128) rather than x channels.
"""

from __future__ import annotations

import torch

from ..errors import require

PROJECTION = 128
# The coreset is chosen among at most this many cells, drawn at random first where there are more: the
# greedy selection costs (cells x bank) and magnetic tile's 685 fit images have 175k cells; MVTec AD
# screw's 272 (70k cells) are all candidates.
MAX_CANDIDATES = 100_000
# With drifted views of the normals (``fit_drift``), this share of the bank goes to the drifted cells
# that the clean part covers worst (the greedy selection continued over them), and the clean part is
# the clean coreset's first (1 - share) cells: the bank's size, and the head's cost, stay as they were.
# Pooling all cells as one set of candidates instead (drawn down to MAX_CANDIDATES, three drifted cells
# for each clean one) lost 4.8 image-AUROC points on MVTec AD screw's validation split, clean images;
# a quarter of the bank cut the false alarms on the generated bolts' drifted held-out normals only from
# 67% to 58%; a half kept screw's clean images (0.952 against 0.954 with a quarter) and ended the blur
# and JPEG false alarms on both validation splits but the bolts' JPEG 20 (docs/benchmarks.md 1.6).
DRIFT_SHARE = 0.5


def cells(x: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> (N*h*w, C): every location's vector, locations forgotten."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


@torch.no_grad()
def greedy_coreset(vectors: torch.Tensor, size: int, seed: int = 0, chunk: int = 65536,
                   covered: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of ``size`` rows of ``vectors`` (M, C) chosen by greedy k-centre selection under a
    random projection; all rows (in order) when ``size`` >= M. ``covered`` (K, C): members already in
    the bank, so the selection continues from them (the first pick is the row they cover worst)."""
    m = vectors.shape[0]
    require(size >= 1, f"memory bank size {size}: must be >= 1")
    if size >= m:
        return torch.arange(m)
    g = torch.Generator().manual_seed(seed)
    x = vectors.float()
    project = x.shape[1] > PROJECTION
    if project:
        proj = torch.randn(x.shape[1], PROJECTION, generator=g) / PROJECTION ** 0.5
        x = x @ proj
    x_sq = x.pow(2).sum(dim=1)
    chosen = torch.empty(size, dtype=torch.long)
    nearest = torch.full((m,), float("inf"))
    if covered is not None and len(covered):
        b = covered.float() @ proj if project else covered.float()
        b_sq = b.pow(2).sum(dim=1)
        for s in range(0, m, chunk // 16):  # the distance of every row to the bank so far
            d = x_sq[s:s + chunk // 16, None] + b_sq[None] - 2.0 * (x[s:s + chunk // 16] @ b.T)
            nearest[s:s + chunk // 16] = d.amin(dim=1)
        chosen[0] = int(torch.argmax(nearest))
    else:
        chosen[0] = int(torch.randint(m, (1,), generator=g))
    for i in range(1, size + 1):
        c = x[chosen[i - 1]]
        for s in range(0, m, chunk):  # squared distances to the newest member, in slices to bound memory
            d = x_sq[s:s + chunk] - 2.0 * (x[s:s + chunk] @ c) + c.pow(2).sum()
            torch.minimum(nearest[s:s + chunk], d, out=nearest[s:s + chunk])
        if i < size:
            chosen[i] = int(torch.argmax(nearest))
    return chosen


@torch.no_grad()
def nearest_distance(query: torch.Tensor, bank: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Euclidean distance (Q,) from each row of ``query`` (Q, C) to its nearest row of ``bank`` (M, C),
    exact (float64 accumulation would change nothing at these sizes; float32 is used)."""
    bank = bank.float()
    bank_sq = bank.pow(2).sum(dim=1)
    out = torch.empty(query.shape[0])
    for s in range(0, query.shape[0], chunk):
        q = query[s:s + chunk].float()
        d2 = q.pow(2).sum(dim=1, keepdim=True) + bank_sq.unsqueeze(0) - 2.0 * q @ bank.T
        out[s:s + chunk] = d2.amin(dim=1).clamp_min(0).sqrt()
    return out


@torch.no_grad()
def fit_bank(model, features: torch.Tensor, device, seed: int = 0, residual: torch.Tensor | None = None,
             drift: torch.Tensor | None = None) -> dict:
    """Fill a ``nearest`` head's bank from these normal features (or their residuals, as the head reads):
    the greedy coreset of all their cells, after the head's local average; with ``drift`` (features of
    drifted views of the same normals), ``DRIFT_SHARE`` of the bank continues the selection over their
    cells. Returns how it was made."""
    head = model.head
    size = int(head.bank.shape[0])
    n_drift = int(size * DRIFT_SHARE) if drift is not None and len(drift) and size > 1 else 0
    vectors = _candidates(model, features, device, seed, residual)
    clean = vectors[greedy_coreset(vectors, size - n_drift, seed=seed)]
    if n_drift:
        drifted = _candidates(model, drift, device, seed, None)
        clean = torch.cat([clean, drifted[greedy_coreset(drifted, n_drift, seed=seed, covered=clean)]])
    head.set_bank(clean)
    return {"candidates": int(vectors.shape[0]), "bank": int(clean.shape[0]), "drifted": n_drift}


def _candidates(model, features: torch.Tensor, device, seed: int, residual: torch.Tensor | None) -> torch.Tensor:
    """The cells the head would read for these normals, drawn down to ``MAX_CANDIDATES``."""
    from .residual_stats import residuals

    head = model.head
    if head.nearest_source == "residual":
        x = residual if residual is not None else residuals(model, features, device)
    else:
        x = features
    vectors = cells(head.nearest_view(x.float().cpu()))
    if vectors.shape[0] > MAX_CANDIDATES:
        pick = torch.randperm(vectors.shape[0], generator=torch.Generator().manual_seed(seed))[:MAX_CANDIDATES]
        vectors = vectors[pick]
    return vectors
