"""The score head: the reconstruction error -> anomaly map at input size, and the image score.

Everything here is part of ``transformer.onnx``: its statistics are buffers, fitted after training
by ``adtr_edge.train.residual_stats``, so that every runtime computes the same map and score.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig


class MapBlur(nn.Module):
    """Separable Gaussian blur of a (N,1,H,W) map as two Conv ops, normalised at the borders.

    Zero padding would pull the border down (a defect at the edge would score less); dividing by
    the blurred all-ones image, a constant computed here, makes it a proper weighted mean with only
    Conv and Div, which every runtime has (reflect padding is not portable across TensorRT versions).
    """

    def __init__(self, sigma: float, size: tuple[int, int]):
        super().__init__()
        radius = max(1, int(math.ceil(3 * sigma)))
        x = torch.arange(-radius, radius + 1, dtype=torch.float32)
        k = torch.exp(-0.5 * (x / sigma) ** 2)
        k = k / k.sum()
        self.radius = radius
        self.register_buffer("kernel_v", k.view(1, 1, -1, 1), persistent=False)
        self.register_buffer("kernel_h", k.view(1, 1, 1, -1), persistent=False)
        self.register_buffer("norm", self._conv(torch.ones(1, 1, *size)), persistent=False)

    def _conv(self, m: torch.Tensor) -> torch.Tensor:
        m = F.conv2d(m, self.kernel_v, padding=(self.radius, 0))
        return F.conv2d(m, self.kernel_h, padding=(0, self.radius))

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        return self._conv(m) / self.norm


REGION_RANK = 256  # principal directions kept exactly by the regional term (256 scored like all of them, docs 1.3)


def region_window(side: int, grid: int) -> tuple[int, int]:
    """(kernel, stride) that cut ``side`` cells into ``grid`` >= 2 equal windows covering every cell:
    disjoint where ``grid`` divides ``side`` (16 -> 4 x 4), overlapping by a cell or two where not
    (14 -> kernel 5, stride 3), so that one AvgPool exports it (ONNX's adaptive pooling needs
    divisible sizes). ``ModelConfig`` refuses a grid of 1 (nothing to compare with)."""
    stride = (side - -(-side // grid)) // (grid - 1)
    return side - (grid - 1) * stride, stride


def region_means(residual: torch.Tensor, grid: int, feature_grid: tuple[int, int]) -> torch.Tensor:
    """(N, C*g*g): the residual (N, C, h, w) averaged over each of g x g regions (``region_window``),
    minus its average over the regions, one vector per image. Subtracting the image's own average
    makes the term blind to a change of the whole image (a codec, the lighting): on the demo's MP4
    frames of PNG-trained tiles, 0 false alarms in 90 instead of 4, at the same validation AUROC
    (docs/benchmarks.md 1.3). The one definition the head and its fit
    (``residual_stats.region_whitening``) share. ``feature_grid`` (h, w) as Python ints: a traced
    shape would export as a Cast that ONNX rejects."""
    (kh, sh), (kw, sw) = (region_window(side, grid) for side in feature_grid)
    x = F.avg_pool2d(residual, kernel_size=(kh, kw), stride=(sh, sw)).flatten(2)  # (N, C, g*g)
    return (x - x.mean(dim=2, keepdim=True)).flatten(1)


# The per-location norm is computed on d / NORM_SCALE and multiplied back: identical in FP32, and it
# keeps the sum of squares of 176+ channels inside FP16's 65504 for residuals up to ~1000 per channel.
NORM_SCALE = 16.0


class AnomalyHead(nn.Module):
    """Reconstruction error -> anomaly map at input size and image score (max of avg-pooled map).

    With ``score="mahalanobis"`` the residual at location u is whitened first: ``(d_u - mu_u) @ W_u``
    where ``W_u W_u^T`` is the inverse of the (shrunk) covariance of normal residuals there. A decoder
    that outputs the per-location mean then scores exactly like a per-location Gaussian (PaDiM), and
    one that explains normal variation from context leaves a smaller, better-conditioned residual.
    The statistics are buffers, so they travel in the checkpoint and in ``transformer.onnx``.
    """

    def __init__(self, cfg: ModelConfig, channels: int | None = None):
        super().__init__()
        self.size = tuple(cfg.input_size)
        self.kernel = int(min(cfg.pool_kernel, *cfg.input_size))
        self.score_kind = cfg.score
        self.blur = MapBlur(cfg.map_blur, self.size) if cfg.map_blur > 0 else None
        if cfg.score == "mahalanobis":
            if channels is None:
                raise ValueError("a mahalanobis head needs the channel count")
            k = cfg.grid[0] * cfg.grid[1]
            self.register_buffer("residual_mean", torch.zeros(k, 1, channels))
            self.register_buffer("residual_whiten", torch.eye(channels).repeat(k, 1, 1))
        self.map_pool, self.map_pool_weight = int(cfg.map_pool), float(cfg.map_pool_weight)
        if self.map_pool:
            self.register_buffer("pool_scale", torch.tensor([self.map_pool_weight]))  # fitted: set_pool_scale
        self.map_pool_clip = float(cfg.map_pool_clip) if self.map_pool else 0.0
        if self.map_pool_clip:
            # A large finite start (FP16-safe), so that an unfitted head pools unclipped; fitted: set_pool_cap.
            self.register_buffer("pool_cap", torch.tensor([1e4]))
        if cfg.score == "nearest":
            if channels is None:
                raise ValueError("a nearest-neighbour head needs the channel count")
            # The bank is stored divided by NORM_SCALE with its rows' squared norms, so that the graph is
            # one MatMul, two Adds and a ReduceMin; fitted by set_bank (unfitted: zeros).
            self.register_buffer("bank", torch.zeros(cfg.nearest_bank, channels))
            self.register_buffer("bank_sq", torch.zeros(cfg.nearest_bank))
        self.nearest_source, self.nearest_pool = cfg.nearest_source, int(cfg.nearest_pool)
        self.reads_reconstruction = cfg.score_reads_reconstruction
        self.region_grid, self.feature_grid = int(cfg.region_grid), tuple(cfg.grid)
        if self.region_grid:
            dim = channels * self.region_grid ** 2  # region_means' length
            rank = min(REGION_RANK, dim)
            # Low rank plus isotropic: the top principal directions of normal regional residuals, each
            # with its own scale, and one scale for everything outside them (see set_region_stats).
            self.register_buffer("region_mean", torch.zeros(1, dim))
            self.register_buffer("region_basis", torch.zeros(dim, rank))
            self.register_buffer("region_scale", torch.zeros(rank))
            self.register_buffer("region_rest", torch.ones(1))
            # (map mean, map std, region mean, region std) of normal images' scores: each term's z-score
            self.register_buffer("score_norm", torch.tensor([0.0, 1.0, 0.0, 1.0]))

    def set_residual_stats(self, mean: torch.Tensor, whiten: torch.Tensor) -> None:
        """``mean`` (K, C) and ``whiten`` (K, C, C), from ``adtr_edge.train.residual_stats``."""
        self.residual_mean.copy_(mean.reshape(self.residual_mean.shape))
        self.residual_whiten.copy_(whiten.reshape(self.residual_whiten.shape))

    def set_bank(self, cells: torch.Tensor) -> None:
        """The nearest-neighbour head's memory bank from ``cells`` (M', C) of normal images, M' <= the
        buffer's rows; with fewer, the first cell fills the rest (a repeated row changes no minimum)."""
        m = self.bank.shape[0]
        if not 1 <= cells.shape[0] <= m:
            raise ValueError(f"a bank of {cells.shape[0]} cells for a head with room for {m}")
        rows = torch.cat([cells, cells[:1].expand(m - cells.shape[0], -1)]).to(self.bank) / NORM_SCALE
        self.bank.copy_(rows)
        self.bank_sq.copy_(rows.pow(2).sum(dim=1))

    def nearest_cells(self, x: torch.Tensor) -> torch.Tensor:
        """(N,1,h,w) distance of each cell of ``x`` (N,C,h,w) to its nearest bank row, from every location.
        As ||q||^2 + ||b||^2 - 2 q.b on the scaled vectors: a (N, K, M) MatMul and a ReduceMin, which
        every runtime runs; the scale keeps the squares far inside FP16's range."""
        x = self.nearest_view(x)
        n, c, h, w = x.shape
        q = x.flatten(2).transpose(1, 2) * (1.0 / NORM_SCALE)  # (N, K, C)
        d2 = torch.matmul(q, self.bank.t()) * -2.0 + self.bank_sq  # (N, K, M)
        d2 = d2.amin(dim=2) + (q * q).sum(dim=2)
        return (torch.sqrt(torch.clamp(d2, min=0.0)) * NORM_SCALE).reshape(n, 1, h, w)

    def nearest_view(self, x: torch.Tensor) -> torch.Tensor:
        """The cells as the bank holds them: averaged over ``nearest_pool`` x ``nearest_pool`` neighbours
        (PatchCore's local aggregation: a cell that carries its surroundings), or as they are."""
        if not self.nearest_pool:
            return x
        k = self.nearest_pool
        return F.avg_pool2d(x, kernel_size=k, stride=1, padding=k // 2, count_include_pad=False)

    def cell_input(self, features: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """What the per-cell score reads: the residual, or (a ``nearest`` head on ``features``) the features."""
        return features - reconstruction if self.reads_reconstruction else features

    def set_region_stats(self, mean: torch.Tensor, basis: torch.Tensor, scale: torch.Tensor, rest: float) -> None:
        """The regional term: ``mean`` (D,), ``basis`` (D, r') orthonormal columns, ``scale`` (r',) =
        1/std along each, ``rest`` = 1/std outside them (``residual_stats.region_whitening``). With
        fewer columns than the buffer holds, the rest stay zero and add nothing."""
        r = basis.shape[1]
        self.region_mean.copy_(mean.reshape(self.region_mean.shape))
        self.region_basis.zero_()
        self.region_basis[:, :r] = basis
        self.region_scale.zero_()
        self.region_scale[:r] = scale
        self.region_rest.fill_(float(rest))

    def set_score_norm(self, map_mean: float, map_std: float, region_mean: float, region_std: float) -> None:
        self.score_norm.copy_(torch.tensor([map_mean, map_std, region_mean, region_std], dtype=self.score_norm.dtype))

    def region_score(self, residual: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance (N,) of the residual averaged over the region grid, in one vector."""
        x = region_means(residual, self.region_grid, self.feature_grid) - self.region_mean
        p = torch.matmul(x, self.region_basis)  # (N, r): coordinates along the principal directions
        rest = (x - torch.matmul(p, self.region_basis.t())) * (self.region_rest / NORM_SCALE)
        p = p * (self.region_scale / NORM_SCALE)
        return torch.sqrt((p * p).sum(dim=1) + (rest * rest).sum(dim=1)) * NORM_SCALE

    def map_score(self, residual: torch.Tensor) -> torch.Tensor:
        """The map's image score (N,) of a residual f - f_hat, without the regional term."""
        return self.from_grid_map(self.residual_map(residual))[1]

    def error_map(self, features: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        return self.residual_map(self.cell_input(features, reconstruction))

    def residual_map(self, d: torch.Tensor) -> torch.Tensor:
        """Per-location score (N,1,h,w) of a residual d = f - f_hat (of the features themselves for a
        ``nearest`` head on features: ``cell_input``)."""
        if self.score_kind == "nearest":
            return self.nearest_cells(d)
        local, pooled = self.map_parts(d)
        return local if pooled is None else local + self.pool_scale * pooled

    def whitened_cells(self, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the whitened residual / NORM_SCALE (N,C,h,w), each cell's norm (N,1,h,w)): the per-location
        part of the map, and what the pooled part averages (its clip is fitted on these norms)."""
        if self.score_kind == "mahalanobis":
            n, c, h, w = d.shape
            t = d.flatten(2).permute(2, 0, 1) - self.residual_mean  # (K, N, C)
            d = torch.matmul(t, self.residual_whiten).permute(1, 2, 0).reshape(n, c, h, w)
        d = d * (1.0 / NORM_SCALE)
        return d, torch.sqrt((d * d).sum(dim=1, keepdim=True)) * NORM_SCALE

    def map_parts(self, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(per-location norm of the whitened residual, the norm of its ``map_pool`` x ``map_pool``
        neighbourhood average or None), each (N,1,h,w). Averaging the whitened vectors before the norm
        adds up a faint change that is coherent over neighbouring cells (uneven shading), which the
        norm of each cell alone, or a blur of the norms, leaves in the noise."""
        d, local = self.whitened_cells(d)
        if not self.map_pool:
            return local, None
        if self.map_pool_clip:
            # Each cell's vector shortened to at most pool_cap: a Min and a Mul in the graph. The floor
            # on the norm only matters where the residual is ~0 (and the product is ~0 anyway).
            d = d * torch.clamp(self.pool_cap / torch.clamp(local, min=1e-3), max=1.0)
        k = self.map_pool
        p = F.avg_pool2d(d, kernel_size=k, stride=1, padding=k // 2, count_include_pad=False)
        return local, torch.sqrt((p * p).sum(dim=1, keepdim=True)) * NORM_SCALE

    def set_pool_cap(self, cap: float) -> None:
        """The length each cell's whitened residual is clipped to before the pooled average."""
        self.pool_cap.fill_(float(cap))

    def set_pool_scale(self, local_mean: float, pooled_mean: float) -> None:
        """The pooled part's weight in the map: ``map_pool_weight`` times the ratio of the two parts'
        means on normal images, so that the weight reads as a share whatever the channels and grid."""
        self.pool_scale.fill_(self.map_pool_weight * local_mean / max(pooled_mean, 1e-12))

    def forward(self, features: torch.Tensor, reconstruction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.cell_input(features, reconstruction)  # the residual, once per frame (or the features, nearest head)
        amap, score = self.from_grid_map(self.residual_map(d))
        if self.region_grid:  # per-location heads only (ModelConfig), whose cells are the residual
            n = self.score_norm
            score = torch.maximum((score - n[0]) / n[1], (self.region_score(d) - n[2]) / n[3])
        return amap, score

    def describe(self) -> dict:
        """How the image score is made, for the exported metadata."""
        rule = {"map": f"max of the anomaly map after a {self.kernel} px average pool"}
        if self.region_grid:
            n = [float(v) for v in self.score_norm]
            rule |= {"image_score": "max of the z-scores of the map's score and of the regional score",
                     "region_grid": self.region_grid, "region_rank": int(self.region_basis.shape[1]),
                     "score_norm": {"map_mean": n[0], "map_std": n[1], "region_mean": n[2], "region_std": n[3]}}
        else:
            rule["image_score"] = "the map's score"
        if self.score_kind == "nearest":
            rule["cell_score"] = (f"distance of each cell's {self.nearest_source} to the nearest of {int(self.bank.shape[0])} "
                                  "normal cells from every location" + (f", after a {self.nearest_pool}x{self.nearest_pool} "
                                                                        "average" if self.nearest_pool else ""))
        if self.map_pool:
            rule["map_pool"] = {"window": self.map_pool, "weight": float(self.pool_scale),
                                "clip_quantile": self.map_pool_clip, "cap": float(self.pool_cap) if self.map_pool_clip else None}
        return rule

    def from_grid_map(self, grid_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Any per-location score map (N,1,h,w) -> (map at input size, image score); baselines use it too."""
        amap = F.interpolate(grid_map, size=self.size, mode="bilinear", align_corners=False)
        if self.blur is not None:
            amap = self.blur(amap)
        pooled = F.avg_pool2d(amap, kernel_size=self.kernel, stride=1)
        score = pooled.flatten(1).amax(dim=1)
        return amap, score
