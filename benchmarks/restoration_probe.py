"""Restoration training, a probe (not shipped: docs/benchmarks.md 1.3, what context can predict).

    python benchmarks/restoration_probe.py --data ../shared/data/magnetic_tile --out runs/restore/m3 \
        --cache runs/isz/.features --split val --backbone tf_efficientnet_lite2 --recipes default \
        --no-baselines --eval-every 100 --set neighbor_mask=3

It runs ``benchmarks/accuracy.py`` with the remaining arguments and replaces UniAD's feature jitter
(``loop.feature_jitter``, the noise added to the transformer's input tokens; the target stays the
clean features) with a corrupting one: the jitter, plus, in half of the images
(``--corrupt-share``), a rectangle of 1-6 x 1-6 grid cells (``--corrupt-side``): half of those get
the features of a rectangle elsewhere in another image of the batch (a CutPaste in feature space),
the others Gaussian noise at 3x each token's RMS on top of the jitter. The decoder must rebuild the
normal feature under a defect and learn to distrust anomalous context. (The other training-input
change tried with it, noise shaped like each location's normal variation, became an option:
``--jitter-shape covariance``.)

The noise is drawn from the training generator, so a run is reproducible.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import adtr_edge.train.loop as loop  # noqa: E402

_jitter = loop.feature_jitter


def _draw(g: torch.Generator, low: int, high: int) -> int:
    return int(torch.randint(low, high, (1,), generator=g))


def cells(y: int, x: int, size: tuple[int, int], width: int) -> torch.Tensor:
    """Token indices of the ``size`` (rows, cols) rectangle at (y, x) on a grid ``width`` cells wide."""
    return torch.tensor([(y + dy) * width + x + dx for dy in range(size[0]) for dx in range(size[1])])


def placed(g: torch.Generator, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """A rectangle of ``size`` at a random place on ``grid``: its token indices."""
    (h, w), (a, b) = grid, size
    y, x = _draw(g, 0, h - a + 1), _draw(g, 0, w - b + 1)
    return cells(y, x, size, w)


def rectangle(g: torch.Generator, grid: tuple[int, int], side: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Token indices of a random rectangle of at most ``side`` x ``side`` cells, and its size."""
    h, w = grid
    size = (_draw(g, 1, min(side, h) + 1), _draw(g, 1, min(side, w) + 1))
    return placed(g, grid, size), size


def restoration_jitter(share: float, side: int):
    def jitter(f: torch.Tensor, scale: float, g: torch.Generator, shape: torch.Tensor | None = None) -> torch.Tensor:
        noise = _jitter(f, scale, g, shape)  # (N, K, C), added to the input tokens by the transformer
        n, c, h, w = f.shape
        tokens = f.flatten(2).transpose(1, 2)
        rms = tokens.pow(2).mean(dim=2, keepdim=True).sqrt()
        for i in range(n):
            if torch.rand(1, generator=g).item() >= share:
                continue
            here, size = rectangle(g, (h, w), side)
            if torch.rand(1, generator=g).item() < 0.5 and n > 1:  # another image's features, elsewhere
                src = (i + _draw(g, 1, n)) % n
                noise[i, here] = tokens[src, placed(g, (h, w), size)] - tokens[i, here]
            else:
                noise[i, here] += torch.randn(len(here), c, generator=g).to(f.device) * rms[i, here] * 3.0
        return noise
    return jitter


def take(args: list[str], flag: str, default: str) -> str:
    if flag not in args:
        return default
    k = args.index(flag)
    value = args[k + 1]
    del args[k:k + 2]
    return value


def main() -> None:
    args = list(sys.argv[1:])
    share, side = float(take(args, "--corrupt-share", "0.5")), int(take(args, "--corrupt-side", "6"))
    loop.feature_jitter = restoration_jitter(share, side)  # step_loss looks it up at call time
    sys.argv = [str(ROOT / "benchmarks" / "accuracy.py")] + args
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
