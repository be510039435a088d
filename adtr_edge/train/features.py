"""Backbone features computed once.

The backbone is frozen and the paper trains without augmentation, so the features of the training
images never change: computing them once makes an epoch cost only the transformer (about 10x less
on a CPU for Lite0 at 256 px). Augmented views (``AUGMENTS``: flips, 90-degree rotations, for
textures) are fixed transforms of the images, so they are computed once and cached the same way.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch

from ..data.camera import DRIFTS, drifted_image
from ..errors import AdtrError
from ..preprocessing import PreprocessSpec, prepare_batch
from ..progress import Task

# Fixed views of an image (H, W, 3): the dihedral group of the square without the identity.
VIEWS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "hflip": lambda im: im[:, ::-1],
    "vflip": lambda im: im[::-1],
    "rot90": lambda im: np.rot90(im, 1),
    "rot180": lambda im: np.rot90(im, 2),
    "rot270": lambda im: np.rot90(im, 3),
    "transpose": lambda im: im.transpose(1, 0, 2),
    "antitranspose": lambda im: np.rot90(im, 2).transpose(1, 0, 2),
}
AUGMENTS = {"none": [], "flip": ["hflip", "vflip"], "d4": list(VIEWS)}


def augment_views(name: str) -> list[str]:
    if name not in AUGMENTS:
        raise AdtrError(f"--augment {name!r}: choose one of {', '.join(AUGMENTS)}")
    return AUGMENTS[name]


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


def channel_stats(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over images and locations."""
    flat = raw.transpose(0, 1).reshape(raw.shape[1], -1).double()
    return flat.mean(dim=1).float(), flat.std(dim=1).float()


def feature_cache_key(cfg, weights_source: str | None, paths: Sequence[Path]) -> str:
    """What the raw features depend on: backbone, stages, size, weights and the exact files."""
    files = []
    for p in paths:
        st = Path(p).stat()
        files.append([str(Path(p).resolve()), st.st_size, int(st.st_mtime)])
    doc = {"backbone": cfg.backbone, "stages": list(cfg.stages), "input_size": list(cfg.input_size),
           "feature_stride": cfg.feature_stride, "mean": list(cfg.mean), "std": list(cfg.std),
           "weights": weights_source, "files": files}
    if cfg.exposure_reference:  # only then: keys of caches written before the field stay valid
        doc["exposure_reference"] = cfg.exposure_reference
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:24]


def cached_raw_features(backbone, imageset, indices: Sequence[int], spec: PreprocessSpec, cfg, *,
                        cache_dir: str | Path | None, device, progress=None, description: str = "features",
                        view: str | None = None) -> torch.Tensor:
    """``extract_raw_features`` with an optional disk cache (safetensors, keyed by ``feature_cache_key``).

    Benchmarks and repeated training runs on the same data skip the backbone entirely. ``view``: one
    of ``VIEWS`` or of the camera drifts (``data.camera.DRIFTS``, at a strength fixed by each file's
    name), applied to each image first (its own cache entry).
    """
    if view is not None and view not in VIEWS and view not in DRIFTS:
        raise AdtrError(f"view {view!r}: not one of {', '.join([*VIEWS, *DRIFTS])}")

    def load(i):
        im = imageset.image(i)
        if view in DRIFTS:
            return drifted_image(imageset, i, view)
        return np.ascontiguousarray(VIEWS[view](im)) if view else im

    def compute():
        return extract_raw_features(backbone, load, list(indices), spec, device=device, progress=progress,
                                    description=description)

    if cache_dir is None or len(indices) == 0:
        return compute()
    from safetensors.torch import load_file, save_file

    from ..fileio import atomic_path

    key = feature_cache_key(cfg, getattr(backbone, "weights_source", None), [imageset.paths[i] for i in indices])
    path = Path(cache_dir) / (f"features-{key}.safetensors" if not view else f"features-{key}-{view}.safetensors")
    if path.is_file():
        return load_file(str(path))["features"]
    raw = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({"features": raw.contiguous()}, str(tmp))
    return raw


def grid_masks(masks: list, spec, grid: tuple[int, int]) -> torch.Tensor:
    """Masks at image size -> anomalous fraction of each grid cell, (M, h, w) in [0, 1]."""
    out = []
    for m in masks:
        m = cv2.resize(m.astype(np.float32), (spec.width, spec.height), interpolation=cv2.INTER_NEAREST)
        out.append(cv2.resize(m, (grid[1], grid[0]), interpolation=cv2.INTER_AREA))
    return torch.from_numpy(np.stack(out)).float()


def drift_features(backbone, imageset, indices: Sequence[int], spec: PreprocessSpec, cfg, drifts: Sequence[str], *,
                   cache_dir: str | Path | None, device, progress=None) -> torch.Tensor:
    """Raw features of one drifted view (``data.camera.DRIFTS``) of each image per drift named, stacked;
    an empty tensor for no drifts. What the score head may be fitted on besides the images themselves."""
    parts = [cached_raw_features(backbone, imageset, indices, spec, cfg, cache_dir=cache_dir, device=device, progress=progress,
                                 description=f"features (train, {d})", view=d) for d in drifts]
    return torch.cat(parts) if parts else torch.empty(0)
