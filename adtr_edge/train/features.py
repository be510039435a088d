"""Backbone features computed once.

The backbone is frozen and the paper trains without augmentation, so the features of the training
images never change: computing them once makes an epoch cost only the transformer (about 10x less
on a CPU for Lite0 at 256 px).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ..preprocessing import PreprocessSpec, prepare_batch
from ..progress import Task


@torch.no_grad()
def extract_raw_features(
    backbone,
    load_image: Callable[[int], np.ndarray],
    indices: Sequence[int],
    spec: PreprocessSpec,
    *,
    batch_size: int = 16,
    device: torch.device = torch.device("cpu"),
    progress=None,
    description: str = "features",
) -> torch.Tensor:
    """Raw (unstandardised) backbone features of the images ``load_image(i)`` for i in ``indices``."""
    backbone.eval()
    task = Task(progress, description, len(indices))
    chunks = []
    for start in range(0, len(indices), batch_size):
        idx = indices[start:start + batch_size]
        batch = prepare_batch([load_image(i) for i in idx], spec)
        x = torch.from_numpy(batch).to(device)
        chunks.append(backbone.raw_features(x).float().cpu())
        task.advance(len(idx))
    return torch.cat(chunks) if chunks else torch.empty(0)


@torch.no_grad()
def extract_raw_features_from_batch(backbone, images_uint8: np.ndarray, device: torch.device) -> torch.Tensor:
    backbone.eval()
    return backbone.raw_features(torch.from_numpy(np.ascontiguousarray(images_uint8)).to(device)).float().cpu()


def channel_stats(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over images and locations."""
    flat = raw.transpose(0, 1).reshape(raw.shape[1], -1).double()
    return flat.mean(dim=1).float(), flat.std(dim=1).float()
