"""The context probe's pieces (benchmarks/context_probe.py, docs/benchmarks.md 1.3, what context can predict): rings of
neighbours, the shifted context, the per-location whitening and the ridge fit must be what the
probe's table says they are."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import context_probe as cp  # noqa: E402


def test_rings_are_the_cells_at_that_chebyshev_distance():
    assert len(cp.ring_offsets(1)) == 8 and len(cp.ring_offsets(2)) == 16
    assert (0, 0) not in cp.ring_offsets(1) and all(max(abs(a), abs(b)) == 2 for a, b in cp.ring_offsets(2))


def test_context_reads_each_neighbour_and_the_mean_beyond_the_border():
    x = torch.arange(2 * 1 * 4 * 5, dtype=torch.float32).reshape(2, 1, 4, 5)
    ctx = cp.context(x, [(0, 1), (-1, 0)])  # right neighbour, cell above
    assert ctx.shape == (2, 2, 4, 5)
    assert torch.equal(ctx[:, 0, :, :4], x[:, 0, :, 1:]) and torch.all(ctx[:, 0, :, 4] == 0)
    assert torch.equal(ctx[:, 1, 1:, :], x[:, 0, :3, :]) and torch.all(ctx[:, 1, 0, :] == 0)


def test_whitening_gives_unit_covariance_and_colours_back():
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(3, 3, generator=g)
    x = torch.einsum("cd,ndhw->nchw", mix, torch.randn(4000, 3, 2, 2, generator=g))
    white = cp.Whitening(x - x.mean(0, keepdim=True), eps=1e-6)
    z = white.whiten(x - x.mean(0, keepdim=True))
    cov = torch.cov(z[:, :, 1, 0].T)
    assert torch.allclose(cov, torch.eye(3), atol=0.05)
    assert torch.allclose(white.colour(z), x - x.mean(0, keepdim=True), atol=1e-4)


def smooth_field(n: int, g: torch.Generator) -> torch.Tensor:
    """Neighbouring cells share most of their value: a 3x3 average of i.i.d. noise."""
    noise = torch.randn(n, 2, 10, 10, generator=g)
    return torch.nn.functional.avg_pool2d(noise, 3, stride=1)  # (n, 2, 8, 8)


def test_context_fit_explains_a_correlated_field_and_not_white_noise():
    g = torch.Generator().manual_seed(1)
    fit, held = smooth_field(400, g), smooth_field(100, g)
    weight, ridge, tried = cp.fit_context(fit, held, cp.ring_offsets(1))
    assert ridge in cp.RIDGES and set(tried) == set(cp.RIDGES)
    assert cp.explained(held, cp.predict(held, cp.ring_offsets(1), weight)) > 0.6
    assert torch.allclose(cp.gram(fit, cp.ring_offsets(1))[0], cp.rows_of(cp.context(fit, cp.ring_offsets(1))).double().T
                          @ cp.rows_of(cp.context(fit, cp.ring_offsets(1))).double())
    white_fit, white_held = torch.randn(400, 2, 8, 8, generator=g), torch.randn(100, 2, 8, 8, generator=g)
    weight, _, _ = cp.fit_context(white_fit, white_held, cp.ring_offsets(1))
    assert cp.explained(white_held, cp.predict(white_held, cp.ring_offsets(1), weight)) < 0.02


def test_far_context_is_the_mean_of_the_cells_beyond_the_window():
    x = torch.randn(2, 3, 6, 7, generator=torch.Generator().manual_seed(2))
    ctx = cp.context(x, cp.Far(2))  # beyond the 3x3 window
    assert ctx.shape == x.shape
    for y, xx in ((0, 0), (2, 3), (5, 6)):
        keep = torch.tensor([[max(abs(a - y), abs(b - xx)) >= 2 for b in range(7)] for a in range(6)])
        assert torch.allclose(ctx[:, :, y, xx], x[:, :, keep].mean(dim=-1), atol=1e-5)
    bump = x.clone()
    bump[:, :, 2:5, 2:5] += 10.0  # a 3x3 defect centred on (3, 3) does not reach that cell's far context
    assert torch.allclose(cp.context(bump, cp.Far(3))[:, :, 3, 3], cp.context(x, cp.Far(3))[:, :, 3, 3], atol=1e-5)


def test_rings_option_reads_rings_and_far_and_refuses_the_cell_itself():
    assert cp.parse_rings("1,far3") == [("ring", 1), ("far", 3)]
    for bad in ("0", "far1", "x", "1,,2"):
        try:
            cp.parse_rings(bad)
        except SystemExit as e:
            assert "--rings" in str(e)
        else:
            raise AssertionError(bad)
