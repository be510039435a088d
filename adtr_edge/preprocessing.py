"""The one definition of preprocessing, shared by training, export and every runtime backend.

Split in two halves:

* host half (this module, numpy + OpenCV only): colour conversion to 3-channel BGR uint8 and a
  resize to the model's input size with ``cv2.INTER_LINEAR`` (no antialiasing, because ONNX and
  TensorRT have none and training must see exactly what the engine sees). The result is a
  ``uint8`` NHWC BGR batch: what OpenCV gives, so a camera frame needs no channel shuffle and the
  host-to-device copy is 4x smaller than float32.
* in-graph half (``scale_shift``): cast to float, with ``exposure_reference`` scale the frame so
  that its mean grey level is that reference (clipped to 0-255), BGR->RGB, scale to [0,1], subtract
  mean and divide by std. ``adtr_edge.model.adtr.InGraphPreprocess`` implements it in torch from
  these same numbers, so it is exported inside the backbone graph and no backend can get it wrong.
  ``normalize_numpy`` is the numpy reference used by tests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from .errors import AdtrError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# ImageNet statistics (torchvision / timm convention), and the [-1, 1] scaling of the TensorFlow
# EfficientNet(-Lite) checkpoints.
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything a backend needs to turn a frame into the backbone graph's input."""

    height: int = 256
    width: int = 256
    mean: tuple[float, float, float] = INCEPTION_MEAN  # RGB order, on [0, 1]-scaled pixels
    std: tuple[float, float, float] = INCEPTION_STD
    color: str = "BGR"  # channel order of the graph input
    layout: str = "NHWC"
    dtype: str = "uint8"
    interpolation: str = "cv2.INTER_LINEAR"  # no antialiasing
    input_name: str = "images"
    exposure_reference: float = 0.0  # > 0: each frame's mean grey level scaled to this first (ModelConfig's)
    notes: str = field(default="host: BGR uint8 -> resize (cv2.INTER_LINEAR); graph: cast, BGR->RGB, /255, (x-mean)/std")

    @property
    def size(self) -> tuple[int, int]:
        return (self.height, self.width)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        if not self.exposure_reference:  # as written before the field: calibration-cache keys and metadata unchanged
            d.pop("exposure_reference")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for key in ("mean", "std"):
            if key in known:
                known[key] = tuple(float(v) for v in known[key])
        spec = cls(**known)
        if spec.color != "BGR" or spec.layout != "NHWC" or spec.dtype != "uint8":
            raise AdtrError(
                f"unsupported preprocessing {spec.color}/{spec.layout}/{spec.dtype}: this version reads BGR/NHWC/uint8"
            )
        return spec

    def scale_shift(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (a, b), in RGB order, such that normalised = rgb_uint8 * a + b."""
        mean = np.asarray(self.mean, dtype=np.float64)
        std = np.asarray(self.std, dtype=np.float64)
        a = 1.0 / (255.0 * std)
        b = -mean / std
        return a.astype(np.float32), b.astype(np.float32)


def to_bgr(frame: np.ndarray, name: str = "frame") -> np.ndarray:
    """Return a 3-channel uint8 BGR view of a grayscale, BGR, BGRA or 16-bit image."""
    if not isinstance(frame, np.ndarray) or frame.size == 0:
        raise AdtrError(f"{name}: empty or not an image array")
    if frame.dtype == np.uint16:
        frame = (frame >> 8).astype(np.uint8)
    elif frame.dtype != np.uint8:
        if np.issubdtype(frame.dtype, np.floating) and frame.max(initial=0) <= 1.0:
            frame = np.clip(frame * 255.0 + 0.5, 0, 255).astype(np.uint8)
        else:
            frame = np.clip(frame, 0, 255).astype(np.uint8)
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.ndim == 3 and frame.shape[2] == 1:
        return cv2.cvtColor(frame[:, :, 0], cv2.COLOR_GRAY2BGR)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return frame
    if frame.ndim == 3 and frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    raise AdtrError(f"{name}: unsupported image shape {frame.shape}")


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as 3-channel uint8 BGR; a missing or corrupt file is one clear error."""
    p = Path(path)
    if not p.is_file():
        raise AdtrError(f"image not found: {p}")
    data = np.fromfile(str(p), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise AdtrError(f"cannot decode image (corrupt or unsupported format): {p}")
    return to_bgr(img, name=str(p))


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask file as a bool HxW array (any non-zero pixel is anomalous)."""
    p = Path(path)
    if not p.is_file():
        raise AdtrError(f"mask not found: {p}")
    data = np.fromfile(str(p), dtype=np.uint8)
    m = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data.size else None
    if m is None:
        raise AdtrError(f"cannot decode mask (corrupt or unsupported format): {p}")
    return m > 127


def resize(frame: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Host half of preprocessing for one frame: -> (H, W, 3) uint8 BGR at the model size."""
    bgr = to_bgr(frame)
    if bgr.shape[0] == spec.height and bgr.shape[1] == spec.width:
        return np.ascontiguousarray(bgr)
    return cv2.resize(bgr, (spec.width, spec.height), interpolation=cv2.INTER_LINEAR)


def prepare_batch(frames: Iterable[np.ndarray] | np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Host half for a batch: -> contiguous (N, H, W, 3) uint8 BGR, the backbone graph's input."""
    if isinstance(frames, np.ndarray) and frames.ndim == 4:
        if frames.shape[1:] == (spec.height, spec.width, 3) and frames.dtype == np.uint8:
            return np.ascontiguousarray(frames)
        frames = list(frames)
    elif isinstance(frames, np.ndarray):
        frames = [frames]
    out = [resize(f, spec) for f in frames]
    if not out:
        raise AdtrError("empty batch: no frames to preprocess")
    return np.ascontiguousarray(np.stack(out, axis=0))


def resize_mask(mask: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Resize a bool mask to the model size (nearest neighbour keeps it binary)."""
    m = mask.astype(np.uint8)
    if m.shape != (spec.height, spec.width):
        m = cv2.resize(m, (spec.width, spec.height), interpolation=cv2.INTER_NEAREST)
    return m.astype(bool)


def normalize_numpy(batch_uint8_nhwc: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Reference of the in-graph half: (N,H,W,3) uint8 BGR -> (N,3,H,W) float32 normalised RGB."""
    a, b = spec.scale_shift()
    rgb = batch_uint8_nhwc[..., ::-1].astype(np.float32)
    if spec.exposure_reference > 0:
        rgb = np.clip(rgb * exposure_gain(batch_uint8_nhwc, spec.exposure_reference)[:, None, None, None], 0.0, 255.0)
    out = rgb * a + b
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def exposure_gain(batch_uint8_nhwc: np.ndarray, reference: float) -> np.ndarray:
    """(N,) the factor that brings each frame's mean grey level to ``reference`` (a black frame: as
    if its mean were 1)."""
    mean = batch_uint8_nhwc.reshape(len(batch_uint8_nhwc), -1).astype(np.float64).mean(axis=1)
    return (reference / np.maximum(mean, 1.0)).astype(np.float32)


def median_grey(images, spec: PreprocessSpec) -> float:
    """The median over ``images`` (BGR frames of any size) of their mean grey level at the model's
    input size: the exposure every frame is brought to with ``exposure_reference``."""
    means = [float(resize(img, spec).mean()) for img in images]
    if not means:
        raise AdtrError("no images to measure the exposure of")
    return float(np.median(means))


def list_images(folder: str | Path, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (hidden files skipped)."""
    p = Path(folder)
    if not p.is_dir():
        raise AdtrError(f"folder not found: {p}")
    return sorted(
        f for f in p.iterdir() if f.is_file() and f.suffix.lower() in suffixes and not f.name.startswith(".")
    )


def preprocess_spec(cfg) -> PreprocessSpec:
    """A model config's preprocessing facts (``adtr_edge.config.ModelConfig``: input size, mean, std):
    the single source for training, export and every runtime."""
    return PreprocessSpec(height=cfg.input_size[0], width=cfg.input_size[1], mean=tuple(cfg.mean), std=tuple(cfg.std),
                          exposure_reference=float(cfg.exposure_reference))
