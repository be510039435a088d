"""The location-free ``nearest`` score head: its memory bank, its map, its config checks."""

from __future__ import annotations

import pytest
import torch

from adtr_edge.config import ModelConfig
from adtr_edge.errors import AdtrError
from adtr_edge.model.head import AnomalyHead
from adtr_edge.train.memory_bank import cells, greedy_coreset, nearest_distance


def _head(bank: int, channels: int = 8, **kw) -> AnomalyHead:
    return AnomalyHead(ModelConfig(score="nearest", nearest_bank=bank, input_size=(64, 64), **kw), channels)


def test_coreset_keeps_every_row_when_the_bank_is_large_enough():
    x = torch.randn(20, 4)
    assert torch.equal(greedy_coreset(x, 20), torch.arange(20))
    assert torch.equal(greedy_coreset(x, 50), torch.arange(20))


def test_coreset_reaches_a_rare_cluster_that_a_random_sample_would_miss():
    g = torch.Generator().manual_seed(0)
    common = torch.randn(5000, 16, generator=g)
    rare = torch.randn(5, 16, generator=g) * 0.1 + 40.0  # 0.1% of the cells, far away
    x = torch.cat([common, rare])
    chosen = greedy_coreset(x, 10, seed=3)
    assert (chosen >= 5000).any()
    # k-centre: every cell is closer to the bank than the farthest cell was to the first pick
    far = nearest_distance(x, x[chosen]).max()
    assert far < nearest_distance(x, x[chosen[:1]]).max()


def test_coreset_refuses_an_empty_bank():
    with pytest.raises(AdtrError, match="memory bank size 0"):
        greedy_coreset(torch.randn(4, 2), 0)


def test_head_map_is_the_exact_nearest_distance():
    head = _head(40)
    fit = torch.randn(6, 8, 4, 4)
    bank = cells(fit)[greedy_coreset(cells(fit), 40)]
    head.set_bank(bank)
    test = torch.randn(3, 8, 4, 4)
    got = head.residual_map(test)[:, 0]
    want = nearest_distance(cells(test), bank).reshape(3, 4, 4)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_head_is_blind_to_where_a_normal_cell_sits():
    """A normal image shifted by two cells scores exactly like the bank's own cells (0); a per-location
    head would see a different cell at every place."""
    head = _head(96)
    fit = torch.randn(6, 8, 4, 4)
    head.set_bank(cells(fit))
    shifted = torch.roll(fit[:1], shifts=(2, 1), dims=(2, 3))
    assert float(head.residual_map(shifted).max()) < 1e-2
    assert float(head.residual_map(shifted + 3.0).min()) > 1.0


def test_a_short_bank_is_padded_with_a_repeated_row_which_changes_no_minimum():
    head = _head(10)
    rows = torch.randn(3, 8)
    head.set_bank(rows)
    q = torch.randn(1, 8, 2, 2)
    torch.testing.assert_close(head.residual_map(q)[:, 0], nearest_distance(cells(q), rows).reshape(1, 2, 2),
                               atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="room for 10"):
        head.set_bank(torch.randn(11, 8))


def test_features_or_residual_source():
    f, rec = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)
    assert torch.equal(_head(4).cell_input(f, rec), f)
    assert torch.equal(_head(4, nearest_source="residual").cell_input(f, rec), f - rec)


@pytest.mark.parametrize("kw, message", [
    ({"nearest_bank": 0}, "nearest_bank 0"),
    ({"nearest_bank": 8, "map_pool": 5}, "no region_grid or map_pool"),
    ({"nearest_bank": 8, "region_grid": 4}, "needs score .mahalanobis."),
    ({"nearest_bank": 8, "nearest_pool": 2}, "nearest_pool 2"),
    ({"nearest_bank": 8, "nearest_source": "pixels"}, "nearest_source 'pixels'"),
])
def test_config_refuses_what_a_nearest_head_cannot_do(kw, message):
    with pytest.raises(AdtrError, match=message):
        ModelConfig(score="nearest", **kw)


def test_a_continued_coreset_starts_where_the_bank_covers_worst():
    covered = torch.zeros(5, 2)
    x = torch.tensor([[0.1, 0.0], [4.0, 0.0], [0.0, 0.2], [9.0, 9.0]])
    assert int(greedy_coreset(x, 1, covered=covered)[0]) == 3
    assert greedy_coreset(x, 2, covered=covered).tolist() == [3, 1]


def test_drifted_views_take_their_share_of_the_bank_and_the_clean_part_is_the_plain_coreset_prefix():
    from types import SimpleNamespace

    from adtr_edge.train.memory_bank import DRIFT_SHARE, fit_bank

    fit, drift = torch.randn(6, 8, 4, 4), torch.randn(6, 8, 4, 4) * 0.3 + 4.0  # drifted cells far from every clean one
    plain, drifted = SimpleNamespace(head=_head(40)), SimpleNamespace(head=_head(40))
    fit_bank(plain, fit, "cpu")
    made = fit_bank(drifted, fit, "cpu", drift=drift)
    n = int(40 * DRIFT_SHARE)
    assert made == {"candidates": 96, "bank": 40, "drifted": n}
    torch.testing.assert_close(drifted.head.bank[:40 - n], plain.head.bank[:40 - n])
    assert float(drifted.head.residual_map(drift[:1]).mean()) < float(plain.head.residual_map(drift[:1]).mean())
