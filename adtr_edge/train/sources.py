"""Turn the user's anomaly options into one fixed ``AnomalyPool`` for ADTR+ training.

Sources (at most one kind per run keeps the loss choice unambiguous; combine pixel-labelled ones):
* synthetic (confetti / patch) pasted onto training normals, with exact masks -> pixel labels;
* labelled real anomalies: with masks -> pixel labels, without -> image labels;
* external "irrelevant" images (outlier exposure) -> image labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import AdtrError
from .loop import AnomalyPool


def build_anomaly_pool(train_set, *, synthetic: str | None = None, count: int = 0, strength: float = 1.0,
                       external: Path | None = None, labelled: Path | None = None, labelled_masks: Path | None = None,
                       seed: int = 0) -> AnomalyPool | None:
    chosen = [name for name, v in (("--synthetic", synthetic), ("--external-anomalies", external), ("--labelled-anomalies", labelled)) if v]
    if not chosen:
        return None
    if len(chosen) > 1:
        raise AdtrError(f"use one anomaly source per run, got {' and '.join(chosen)} (fine-tune again with --init-from for another)")
    rng = np.random.default_rng(seed + 1)
    if synthetic:
        from ..data.anomalies import SyntheticAnomalies

        maker = SyntheticAnomalies(synthetic, probability=1.0, strength=strength, seed=seed)
        normals = [i for i in range(len(train_set)) if int(train_set.labels[i]) == 0]
        n = count or len(normals)
        images, masks = [], []
        for k in range(n):
            img, mask, _ = maker(train_set.image(normals[int(rng.integers(len(normals)))]), rng)
            images.append(img)
            masks.append(mask)
        return AnomalyPool(images, masks, synthetic)
    if external:
        from ..data.anomalies import ExternalAnomalies

        ext = ExternalAnomalies(external)
        n = min(len(ext), count) if count else len(ext)
        return AnomalyPool([ext.image(i) for i in range(n)], None, "external")
    from ..data.anomalies import load_labelled_anomalies

    lab = load_labelled_anomalies(labelled, labelled_masks)
    idx = [i for i in range(len(lab)) if int(lab.labels[i]) == 1]
    if not idx:
        raise AdtrError(f"--labelled-anomalies {labelled}: no anomalous images found")
    has_masks = all(lab[i].mask_path is not None for i in idx)
    images = [lab.image(i) for i in idx]
    masks = [lab.mask(i) for i in idx] if has_masks else None
    return AnomalyPool(images, masks, "labelled-pixel" if has_masks else "labelled-image")
