import math

import pytest
import torch

from adtr_edge.model.losses import image_loss, normal_loss, pixel_loss, pseudo_huber


def test_normal_loss_is_feature_mse():
    f = torch.zeros(1, 2, 1, 2)
    r = torch.tensor([[[[1.0, 0.0]], [[0.0, 3.0]]]])
    assert normal_loss(f, r).item() == pytest.approx((1 + 9) / 4)


def test_pseudo_huber_by_hand():
    f = torch.zeros(1, 2, 1, 1)
    r = torch.tensor([[[[1.0]], [[3.0]]]])  # mean |d| = 2
    assert pseudo_huber(f, r).item() == pytest.approx(math.sqrt(5) - 1)


def test_pixel_loss_by_hand():
    phi = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    y = torch.tensor([[[0.0, 0.0], [0.0, 1.0]]])
    alpha = 0.5
    normal_term = (1 + 2 + 3) / 4
    anomalous_mean = 4 / 4
    expected = normal_term - alpha * math.log(1 - math.exp(-anomalous_mean))
    assert pixel_loss(phi, y, alpha).item() == pytest.approx(expected, rel=1e-5)


def test_pixel_loss_limits():
    phi = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    y = torch.tensor([[[0.0, 0.0], [0.0, 1.0]]])
    # alpha = 0: only the normal term remains
    assert pixel_loss(phi, y, 0.0).item() == pytest.approx(6 / 4)
    # empty mask: finite, equal to the plain mean of phi (no -log(0))
    empty = pixel_loss(phi, torch.zeros_like(y), 1.0)
    assert math.isfinite(empty.item()) and empty.item() == pytest.approx(10 / 4)


def test_pixel_loss_pushes_anomalous_error_up():
    phi = torch.tensor([[[0.1, 0.1], [0.1, 0.1]]], requires_grad=True)
    y = torch.tensor([[[0.0, 0.0], [0.0, 1.0]]])
    pixel_loss(phi, y, 1.0).backward()
    assert phi.grad[0, 1, 1] < 0 < phi.grad[0, 0, 0]  # descent raises anomalous phi, lowers normal phi


def test_image_loss_by_hand_top_k():
    phi = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0], [3.0, 4.0]]])
    labels = torch.tensor([0.0, 1.0])
    alpha = 0.1
    q = (4 + 3) / 2
    expected = (q + alpha * -math.log(1 - math.exp(-q))) / 2
    assert image_loss(phi, labels, alpha, top_k=2).item() == pytest.approx(expected, rel=1e-5)
    # top_k larger than the map clamps to the whole map
    assert image_loss(phi[:1], labels[:1], alpha, top_k=999).item() == pytest.approx(2.5)
