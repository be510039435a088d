import torch

from adtr_edge.evaluation.baselines import gaussian, mean_template, nearest_neighbour


def test_mean_template_by_hand():
    train = torch.tensor([[[[0.0]], [[0.0]]], [[[2.0]], [[0.0]]]])  # mean (1, 0)
    test = torch.tensor([[[[1.0]], [[3.0]]]])
    assert mean_template(train, test).item() == 3.0


def test_nearest_neighbour_exact_and_bank_subsample():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(5, 3, 2, 2, generator=g)
    test = torch.cat([train[:1], train[:1] + 10])
    d = nearest_neighbour(train, test)
    assert torch.allclose(d[0], torch.zeros_like(d[0]), atol=1e-3)  # its own patches are in the bank
    assert (d[1] > 5).all()
    # brute force on a small bank subsample
    small = nearest_neighbour(train, test, max_bank=7, seed=1)
    assert (small >= d - 1e-3 * (1 + d)).all()  # a smaller bank can only be farther


def test_gaussian_ranks_outliers_higher():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(200, 4, 2, 2, generator=g)
    test = torch.stack([torch.zeros(4, 2, 2), torch.full((4, 2, 2), 6.0)])
    d = gaussian(train, test)
    assert d.shape == (2, 1, 2, 2)
    assert (d[1] > d[0] + 5).all()
