"""Image datasets: the MVTec-AD layout, a plain folder layout, and the guards around them.

An ``ImageSet`` is an ordered list of ``Sample`` records (path, label, defect, mask path). Pixels
are decoded only on demand, through ``preprocessing.read_image`` / ``read_mask``, so a dataset of
any size is cheap to list, split and fingerprint.

Rules that every loader follows (each violation is one ``AdtrError`` naming the file):

* a defect image needs its mask, unless its whole defect group has no ground truth at all (then it
  carries an image-level label only: ``mask_path`` is None and its mask reads as all False);
* a mask must have the same size as its image (checked on load and by ``ImageSet.validate``);
* a training set must not be empty, and must not share a file with the test set
  (``guard_disjoint``), because an overlap silently inflates every metric.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import AdtrError
from ..fileio import sha256_file
from ..preprocessing import PreprocessSpec, list_images, prepare_batch, read_image, read_mask, resize_mask

GOOD = "good"
SPLITS = ("train", "test")
# Mask names looked up for an image ``<stem>.<ext>``, in order: MVTec's convention first.
MASK_NAME_PATTERNS = ("{stem}_mask.png", "{stem}.png")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # 0 normal, 1 anomalous
    defect: str  # "good" for normal images
    mask_path: Path | None = None


class ImageSet:
    """An ordered, immutable list of samples with helpers to read, split and fingerprint them."""

    def __init__(self, samples: Iterable[Sample], root: str | os.PathLike | None = None):
        self._samples: tuple[Sample, ...] = tuple(samples)
        self.root: Path | None = Path(root) if root is not None else None
        self._grey: dict[int, float] = {}  # image index -> mean grey level, kept by validate()

    # --- list behaviour -------------------------------------------------------------------
    @property
    def samples(self) -> list[Sample]:
        return list(self._samples)

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, i: int) -> Sample:
        return self._samples[i]

    def __iter__(self):
        return iter(self._samples)

    def __repr__(self) -> str:
        counts = dict(sorted(Counter(self.defects).items()))
        return f"ImageSet(root={str(self.root)!r}, n={len(self)}, defects={counts})"

    # --- columns --------------------------------------------------------------------------
    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self._samples], dtype=np.int64)

    @property
    def defects(self) -> list[str]:
        """Defect name of every sample, in order ("good" for normal images)."""
        return [s.defect for s in self._samples]

    @property
    def paths(self) -> list[Path]:
        return [s.path for s in self._samples]

    # --- pixels ---------------------------------------------------------------------------
    def image(self, i: int) -> np.ndarray:
        """The image as 3-channel uint8 BGR at its own size."""
        return read_image(self._samples[i].path)

    def mask(self, i: int) -> np.ndarray:
        """The bool HxW mask at the image's own size (all False without ground truth)."""
        return self.load(i)[1]

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(image BGR uint8, mask bool HxW), decoding the image once."""
        sample = self._samples[i]
        img = read_image(sample.path)
        return img, _mask_for(sample, img.shape[:2])

    # --- derived sets ---------------------------------------------------------------------
    def subset(self, indices: Iterable[int]) -> "ImageSet":
        return ImageSet((self._samples[int(i)] for i in indices), root=self.root)

    def filter(self, label: int | None = None, defect: str | None = None) -> "ImageSet":
        keep = [
            i
            for i, s in enumerate(self._samples)
            if (label is None or s.label == label) and (defect is None or s.defect == defect)
        ]
        return self.subset(keep)

    def split(self, fraction: float, seed: int = 0) -> tuple["ImageSet", "ImageSet"]:
        """Deterministically split into (rest, held_out); held_out has ``fraction`` of each defect.

        Stratified per defect so a held-out test part keeps every defect type; each part keeps
        the original order. The same samples and seed always give the same split.
        """
        if not 0.0 <= fraction <= 1.0:
            raise AdtrError(f"split fraction must be in [0, 1], got {fraction}")
        rng = np.random.default_rng(seed)
        held: set[int] = set()
        by_defect: dict[str, list[int]] = {}
        for i, s in enumerate(self._samples):
            by_defect.setdefault(s.defect, []).append(i)
        for defect in sorted(by_defect):
            idx = by_defect[defect]
            n_held = int(round(fraction * len(idx)))
            held.update(idx[j] for j in rng.permutation(len(idx))[:n_held])
        rest = [i for i in range(len(self)) if i not in held]
        return self.subset(rest), self.subset(sorted(held))

    def __add__(self, other: "ImageSet") -> "ImageSet":
        root = self.root if self.root == other.root else _common_root(self.paths + other.paths)
        return ImageSet(self._samples + other._samples, root=root)

    # --- checks and provenance ------------------------------------------------------------
    def _each(self, fn, indices, workers: int | None = None) -> list:
        """``fn(i)`` for each index, on threads: OpenCV releases the GIL while decoding, so threads give
        a real speed-up to anything that reads the images."""
        with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
            return list(pool.map(fn, indices))

    def validate(self, workers: int | None = None) -> "ImageSet":
        """Decode every image and mask once; raise on the first corrupt file or size mismatch. Each
        image's mean grey level is kept, so ``exposure_spread`` needs no second decode."""
        grey: dict[int, float] = {}

        def check(i: int) -> str | None:
            try:
                grey[i] = float(self.load(i)[0].mean())
            except AdtrError as e:
                return str(e)
            return None

        problems = [p for p in self._each(check, range(len(self)), workers) if p]
        if problems:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise AdtrError(problems[0] + more)
        self._grey = grey
        return self

    def exposure_spread(self, workers: int | None = None) -> dict:
        """The 5th, 50th and 95th percentile of the normal images' mean grey level (0-255): how much
        their exposure varies, which is what ``train --normalize-exposure`` takes out."""
        normal = [i for i, label in enumerate(self.labels) if label == 0]
        if not normal:
            return {}
        known = self._grey
        means = [known[i] for i in normal] if all(i in known for i in normal) else \
            self._each(lambda i: float(self.image(i).mean()), normal, workers)
        p5, p50, p95 = np.percentile(means, [5, 50, 95])
        return {"normal_mean_grey": {"p5": round(float(p5), 1), "p50": round(float(p50), 1), "p95": round(float(p95), 1)}}

    def summary(self) -> dict:
        """Counts and a fingerprint of the files, recorded with a model to say what it saw."""
        root = self.root if self.root is not None else _common_root(self.paths)
        entries = []
        for s in self._samples:
            rel = _relative(s.path, root)
            entries.append(f"{rel}\t{s.path.stat().st_size}")
        digest = hashlib.sha256("\n".join(sorted(entries)).encode("utf-8")).hexdigest()
        labels = self.labels
        return {
            "root": str(root) if root is not None else None,
            "n_images": len(self),
            "n_normal": int((labels == 0).sum()),
            "n_anomalous": int((labels == 1).sum()),
            "n_with_mask": sum(s.mask_path is not None for s in self._samples),
            "counts": dict(sorted(Counter(self.defects).items())),
            "files_sha256": digest,
        }


def _relative(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            pass
    return path.as_posix()


def _common_dir(dirs: Sequence[Path]) -> Path | None:
    if not dirs:
        return None
    try:
        return Path(os.path.commonpath([str(d) for d in dirs]))
    except ValueError:  # mixed drives, or relative and absolute paths
        return None


def _common_root(paths: Sequence[Path]) -> Path | None:
    return _common_dir([p.parent for p in paths])


def _mask_for(sample: Sample, image_hw: tuple[int, int]) -> np.ndarray:
    if sample.mask_path is None:
        return np.zeros(image_hw, dtype=bool)
    mask = read_mask(sample.mask_path)
    if mask.shape != tuple(image_hw):
        raise AdtrError(
            f"mask size {mask.shape[1]}x{mask.shape[0]} != image size {image_hw[1]}x{image_hw[0]}: "
            f"{sample.mask_path} (image {sample.path})"
        )
    return mask


# --- discovery helpers --------------------------------------------------------------------------


def _require_dir(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise AdtrError(f"{what} not found: {p}")
    return p


def _find_mask(mask_dir: Path, stem: str) -> Path | None:
    for pattern in MASK_NAME_PATTERNS:
        candidate = mask_dir / pattern.format(stem=stem)
        if candidate.is_file():
            return candidate
    return None


def _anomalous_group(images: list[Path], defect: str, mask_dir: Path | None, strict: bool) -> list[Sample]:
    """Samples of one defect group, with masks looked up in ``mask_dir``.

    A group with no mask at all is image-level labelled, unless ``strict`` (the user named a mask
    folder explicitly, so an unmatched folder is a mistake, not a choice). A group with some masks
    must have all of them: a lone missing mask is reported by name.
    """
    found = {p: _find_mask(mask_dir, p.stem) if mask_dir is not None and mask_dir.is_dir() else None for p in images}
    if not any(found.values()):
        if strict and images:
            raise AdtrError(f"no mask in {mask_dir} matches any image of {images[0].parent} (expected e.g. "
                            f"{MASK_NAME_PATTERNS[0].format(stem=images[0].stem)})")
        return [Sample(p, 1, defect, None) for p in images]
    for p, m in found.items():
        if m is None:
            raise AdtrError(
                f"missing mask for defect image {p}: expected {mask_dir / MASK_NAME_PATTERNS[0].format(stem=p.stem)}"
            )
    return [Sample(p, 1, defect, found[p]) for p in images]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise AdtrError(f"split must be 'train' or 'test', got {split!r}")


# --- loaders ------------------------------------------------------------------------------------


def is_mvtec_root(path: str | os.PathLike) -> bool:
    return (Path(path) / "train" / GOOD).is_dir()


def load_mvtec(root: str | os.PathLike, split: str = "train") -> ImageSet:
    """One MVTec-AD category: ``train/good``; ``test/<defect>`` with ``ground_truth/<defect>`` masks."""
    _check_split(split)
    root = _require_dir(root, "dataset folder")
    if split == "train":
        good = root / "train" / GOOD
        if not good.is_dir():
            raise AdtrError(f"not an MVTec-AD layout (missing folder {good})")
        images = list_images(good)
        if not images:
            raise AdtrError(f"empty training set: no images in {good}")
        return ImageSet((Sample(p, 0, GOOD, None) for p in images), root=root)

    test = _require_dir(root / "test", "MVTec-AD test folder")
    samples: list[Sample] = []
    for sub in sorted(d for d in test.iterdir() if d.is_dir() and not d.name.startswith(".")):
        images = list_images(sub)
        if sub.name == GOOD:
            samples.extend(Sample(p, 0, GOOD, None) for p in images)
        else:
            samples.extend(_anomalous_group(images, sub.name, root / "ground_truth" / sub.name, strict=False))
    if not samples:
        raise AdtrError(f"empty test set: no images under {test}")
    return ImageSet(samples, root=root)


def _anomalous_samples(anomalous_dir: Path, mask_dir: Path | None) -> list[Sample]:
    """Images directly in ``anomalous_dir`` (defect = folder name), or one subfolder per defect."""
    direct = list_images(anomalous_dir)
    if direct:
        defect = anomalous_dir.name if anomalous_dir.name != GOOD else "anomalous"
        return _anomalous_group(direct, defect, mask_dir, strict=mask_dir is not None)
    samples: list[Sample] = []
    for sub in sorted(d for d in anomalous_dir.iterdir() if d.is_dir() and not d.name.startswith(".")):
        if sub.name == GOOD:
            continue
        images = list_images(sub)
        if not images:
            continue
        sub_masks = None
        if mask_dir is not None:
            # Per-defect mask subfolders (MVTec style) when present, else one flat mask folder.
            sub_masks = mask_dir / sub.name if (mask_dir / sub.name).is_dir() else mask_dir
        samples.extend(_anomalous_group(images, sub.name, sub_masks, strict=False))
    if mask_dir is not None and samples and not any(s.mask_path for s in samples):
        raise AdtrError(f"no mask in {mask_dir} matches any image under {anomalous_dir}")
    return samples


def load_folder(
    normal_dir: str | os.PathLike,
    anomalous_dir: str | os.PathLike | None = None,
    mask_dir: str | os.PathLike | None = None,
    split: str = "train",
    test_fraction: float = 0.2,
    seed: int = 0,
) -> ImageSet:
    """Plain folders: normal images (a ``test_fraction`` of them held out for testing, by ``seed``),
    optional anomalous images (test only), optional masks named ``<stem>_mask.png`` or ``<stem>.png``.
    """
    _check_split(split)
    if not 0.0 <= test_fraction < 1.0:
        raise AdtrError(f"test_fraction must be in [0, 1), got {test_fraction}")
    normal = _require_dir(normal_dir, "normal image folder")
    anomalous = _require_dir(anomalous_dir, "anomalous image folder") if anomalous_dir is not None else None
    masks = _require_dir(mask_dir, "mask folder") if mask_dir is not None else None
    if masks is not None and anomalous is None:
        raise AdtrError(f"mask folder {masks} given without an anomalous image folder")

    normals = ImageSet((Sample(p, 0, GOOD, None) for p in list_images(normal)), root=normal)
    if not len(normals):
        raise AdtrError(f"no images in normal image folder {normal}")
    train, held_out = normals.split(test_fraction, seed)
    if split == "train":
        if not len(train):
            raise AdtrError(f"empty training set: test_fraction {test_fraction} leaves no image of {normal}")
        return train

    samples = list(held_out.samples)
    if anomalous is not None:
        samples.extend(_anomalous_samples(anomalous, masks))
    if not samples:
        raise AdtrError(f"empty test set: test_fraction {test_fraction} holds out no image of {normal} "
                        "and no anomalous folder was given")
    dirs = [normal] + ([anomalous] if anomalous is not None else [])
    return ImageSet(samples, root=_common_dir(dirs))


_SPEC_KEYS = {"normal_dir", "anomalous_dir", "mask_dir", "test_fraction", "seed"}


def load_dataset(root_or_spec: str | os.PathLike | dict, split: str = "train") -> ImageSet:
    """An MVTec-AD category (a folder with ``train/good``), a plain folder of normal images, or a
    dict of ``load_folder`` arguments (normal_dir, anomalous_dir, mask_dir, test_fraction, seed).
    """
    _check_split(split)
    if isinstance(root_or_spec, dict):
        unknown = sorted(set(root_or_spec) - _SPEC_KEYS)
        if unknown:
            raise AdtrError(f"dataset spec: unknown keys {unknown} (known: {sorted(_SPEC_KEYS)})")
        if "normal_dir" not in root_or_spec:
            raise AdtrError("dataset spec: 'normal_dir' is required")
        return load_folder(split=split, **root_or_spec)
    root = _require_dir(root_or_spec, "dataset folder")
    if is_mvtec_root(root):
        return load_mvtec(root, split)
    if list_images(root):
        return load_folder(root, split=split)
    raise AdtrError(f"dataset folder {root} is neither an MVTec-AD category (no train/good) nor a folder of images")


# --- guards and batches -------------------------------------------------------------------------


def validation_split(test: ImageSet, fraction: float = 0.3) -> tuple[list[int], list[int]]:
    """(validation, held-out) indices of a test set: every choice is made on the first, the second is reported.

    Membership depends only on each file's defect type and name (a hash), so it is the same on every
    machine, for any listing order, and adding images to a category does not move the others.
    """
    if not 0.0 < fraction < 1.0:
        raise AdtrError(f"validation fraction {fraction}: must be between 0 and 1")
    val, rest = [], []
    for i, s in enumerate(test):
        h = hashlib.sha256(f"{s.defect}/{s.path.name}".encode("utf-8")).digest()
        (val if int.from_bytes(h[:8], "big") / 2.0 ** 64 < fraction else rest).append(i)
    return val, rest


def guard_disjoint(train: ImageSet, test: ImageSet) -> None:
    """Stop if any file is in both sets, by resolved path or by identical content.

    Only files whose byte size occurs in both sets are hashed, so the check stays cheap.
    """
    train_paths = {p.resolve(): p for p in train.paths}
    for p in test.paths:
        if p.resolve() in train_paths:
            raise AdtrError(f"train and test sets share a file: {p}")
    sizes_train: dict[int, list[Path]] = {}
    for p in train.paths:
        sizes_train.setdefault(p.stat().st_size, []).append(p)
    candidates = [(p, p.stat().st_size) for p in test.paths]
    candidates = [(p, size) for p, size in candidates if size in sizes_train]
    if not candidates:
        return
    train_hashes: dict[str, Path] = {}
    for size in {size for _, size in candidates}:
        for p in sizes_train[size]:
            train_hashes.setdefault(sha256_file(p), p)
    for p, _ in candidates:
        twin = train_hashes.get(sha256_file(p))
        if twin is not None:
            raise AdtrError(f"train and test sets share identical content: {p} == {twin}")



def guard_not_trained_on(test: ImageSet, train_paths: list[str]) -> None:
    """An image a checkpoint trained on (its recorded ``train_paths``) may never be scored or used to choose."""
    if train_paths:
        guard_disjoint(ImageSet([Sample(Path(p), 0, "good") for p in train_paths if Path(p).exists()]), test)

def load_batch(imageset: ImageSet, indices: Sequence[int], spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 NHWC BGR batch at the model size, bool (N,H,W) masks resized by nearest neighbour)."""
    if len(indices) == 0:
        raise AdtrError("load_batch: no indices given")
    images, masks = [], []
    for i in indices:
        img, mask = imageset.load(int(i))
        images.append(img)
        masks.append(resize_mask(mask, spec))
    return prepare_batch(images, spec), np.stack(masks, axis=0)


# Where the normals' brightest twentieth is this many times as bright as their darkest, exposure is
# worth taking out. Measured spreads (p95 / p5 of the mean grey level): magnetic tile 2.7, where
# ``--normalize-exposure`` gained 0.6 image-AUROC points on the held-out split; the generated weave
# 1.16, MVTec AD screw 1.10 and the generated bolts 1.15, where it cost (docs/benchmarks.md 1.6).
EXPOSURE_HINT_RATIO = 1.5


def exposure_hint(spread: dict) -> str | None:
    """A one-line suggestion of ``--normalize-exposure`` where ``exposure_spread``'s percentiles say
    the normals' exposure varies widely; None otherwise."""
    grey = spread.get("normal_mean_grey")
    if not grey or grey["p5"] <= 0 or grey["p95"] / grey["p5"] < EXPOSURE_HINT_RATIO:
        return None
    return (f"note: your normals' exposure varies (mean grey level {grey['p5']:g} to {grey['p95']:g} from the 5th to the "
            f"95th percentile, x{grey['p95'] / grey['p5']:.1f}); --normalize-exposure takes that out inside the graph "
            "(compare with eval --against)")
