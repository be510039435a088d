"""The review folder: what operators confirmed, as a dataset that ``train``, ``eval`` and
``check-data`` read as they are (the MVTec-AD layout).

    DIR/train/good/<id>.png                       confirmed normal ("not a defect")
    DIR/test/<label>/<id>.png                     confirmed defect with a painted region ...
    DIR/ground_truth/<label>/<id>_mask.png        ... and that region (255 inside, 0 outside)
    DIR/test/<label>-no-mask/<id>.png             confirmed defect, no region painted
    beside every image: <id>.json                 the sidecar: source, frame, times, score, model, reviewer

Defects without a mask get a group of their own because the MVTec loader keeps a rule that
protects the pixel metrics: a defect group has a mask for every image or for none (an image
without one would count as defect-free pixels).

Every file is written to a hidden temporary name (``.tmp-*``, which the dataset loaders skip)
and then hard-linked to its final name, which fails instead of replacing a file that exists: two
streams or two cameras sharing one folder never overwrite each other. Ids are made of the time,
the source, the frame and random bits; on the rare clash a new id is drawn. The sidecar and the
mask appear before the image, so a reader that finds an image finds its mask and sidecar too;
``remove`` (undo) takes the image away first for the same reason. A write that fails half-way
removes what it had written.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import re
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import cv2
import numpy as np

from ..errors import AdtrError

FORMAT = "adtr-edge-review/1"
VERDICTS = ("defect", "normal")
DEFAULT_LABEL = "defect"
NO_MASK_SUFFIX = "-no-mask"
GOOD = "good"
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")


def _slug(text: str, n: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_.")[:n] or "src"


def check_label(label: str) -> str:
    """A defect label that is a safe folder name, not 'good' and not a no-mask group's name."""
    if not isinstance(label, str) or not _LABEL.match(label):
        raise AdtrError(f"label {label!r}: use letters, digits, '_', '-' or '.' (at most 64, starting with a letter or digit)")
    if label == GOOD or label.endswith(NO_MASK_SUFFIX):
        raise AdtrError(f"label {label!r}: reserved ('{GOOD}' holds normals, '*{NO_MASK_SUFFIX}' defects without a mask)")
    return label


def model_digest(model_dir: os.PathLike) -> Dict[str, Any]:
    """The model a review was made with: its folder and one digest over its graphs' sha256
    (what the manifest records, so no graph is read again)."""
    import hashlib

    from ..folder import read_model_folder, recorded_sha256

    folder = read_model_folder(model_dir)
    parts = sorted(f"{g}:{digest}" for g, digest in recorded_sha256(folder).items())
    return {"path": str(folder.path), "digest": hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]}


def _link_new(tmp: Path, final: Path) -> None:
    """``tmp`` becomes ``final`` only if ``final`` does not exist (FileExistsError otherwise)."""
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        # A file system without hard links: reserve the name exclusively, then rename over the
        # reservation (a reader may see an empty file for a moment; never another writer's).
        fd = os.open(final, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.close(fd)
        os.replace(tmp, final)
        return
    os.unlink(tmp)


def _write_new(final: Path, data: bytes) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{final.name}-", dir=final.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        _link_new(Path(tmp), final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _png(image: np.ndarray, what: str) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise AdtrError(f"cannot encode the {what} as PNG")
    return buf.tobytes()


def as_mask(mask: np.ndarray, frame_shape, what: str = "mask") -> np.ndarray:
    """A painted region as uint8 0/255 of the frame's size; any non-zero pixel (or, for a 4-channel
    canvas export, any painted alpha) is inside. A size other than the frame's is refused."""
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[:, :, 3] if m.shape[2] == 4 else m.max(axis=2)
    if m.ndim != 2:
        raise AdtrError(f"{what}: expected a 2-D image, got shape {tuple(np.shape(mask))}")
    h, w = int(frame_shape[0]), int(frame_shape[1])
    if m.shape != (h, w):
        raise AdtrError(f"{what} is {m.shape[1]}x{m.shape[0]}, the frame is {w}x{h}: paint on the frame at its own size")
    return np.where(m > 0, 255, 0).astype(np.uint8)


class ReviewFolder:
    """One review folder (created if missing). ``option`` names it in errors (``--review-dir``)."""

    def __init__(self, path: os.PathLike, option: str = "--review-dir"):
        self.path = Path(path)
        self.option = option
        if self.path.exists() and not self.path.is_dir():
            raise AdtrError(f"{option} {self.path}: is a file, not a folder")
        try:
            (self.path / "train" / GOOD).mkdir(parents=True, exist_ok=True)  # makes it an MVTec root
            probe = tempfile.NamedTemporaryFile(prefix=".tmp-probe-", dir=self.path / "train" / GOOD)
            probe.close()
        except OSError as e:
            raise AdtrError(f"{option} {self.path}: cannot write there ({e.strerror or e})") from None

    def _paths(self, verdict: str, label: str, masked: bool, rid: str) -> Dict[str, Optional[Path]]:
        if verdict == "normal":
            folder = self.path / "train" / GOOD
            return {"image": folder / f"{rid}.png", "sidecar": folder / f"{rid}.json", "mask": None}
        group = label if masked else label + NO_MASK_SUFFIX
        folder = self.path / "test" / group
        return {"image": folder / f"{rid}.png", "sidecar": folder / f"{rid}.json",
                "mask": self.path / "ground_truth" / group / f"{rid}_mask.png" if masked else None}

    def add(self, image: np.ndarray, verdict: str, *, label: str = DEFAULT_LABEL, mask: Optional[np.ndarray] = None,
            source: Optional[str] = None, frame: Optional[int] = None, name: Optional[str] = None,
            captured: Optional[float] = None, score: Optional[float] = None, threshold: Optional[float] = None,
            model: Optional[Dict[str, Any]] = None, reviewer: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Write one review: the raw ``image`` (BGR uint8), its ``mask`` (defects only, the frame's
        size) and the sidecar; returns the sidecar (with ``id`` and the files, relative to the folder)."""
        if verdict not in VERDICTS:
            raise AdtrError(f"verdict {verdict!r}: choose one of {', '.join(VERDICTS)}")
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise AdtrError(f"the frame to review must be an 8-bit image, got {image.dtype} {image.shape}")
        if verdict == "normal":
            if mask is not None:
                raise AdtrError("a mask marks a defect's region; a frame reviewed as not a defect has none")
            label = GOOD
        else:
            label = check_label(label)
        painted = as_mask(mask, image.shape) if mask is not None else None
        if painted is not None and not painted.any():
            painted = None  # an empty canvas is no region: the defect is image-labelled
        image_png = _png(image, "frame")
        mask_png = _png(painted, "mask") if painted is not None else None
        now = time.time()
        record: Dict[str, Any] = {
            "format": FORMAT, "verdict": verdict, "label": label, "source": source, "frame": frame, "name": name,
            "captured": _iso(captured) if captured is not None else None, "reviewed": _iso(now),
            "score": None if score is None else round(float(score), 6),
            "threshold": None if threshold is None else float(threshold),
            "model": model, "reviewer": reviewer or {}, "size": [int(image.shape[1]), int(image.shape[0])],
        }
        for _ in range(5):  # a clash needs the same second, source, frame and 32 random bits
            stamp = _dt.datetime.fromtimestamp(now, tz=_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
            rid = f"{stamp}-{_slug(source or 'file')}-f{frame if frame is not None else 0}-{secrets.token_hex(4)}"
            paths = self._paths(verdict, label, painted is not None, rid)
            record.update(id=rid, image=self._rel(paths["image"]), mask=self._rel(paths["mask"]) if paths["mask"] else None)
            try:
                self._publish(paths, record, image_png, mask_png)
            except FileExistsError:
                continue
            return dict(record)
        raise AdtrError(f"{self.option} {self.path}: could not find a free name for the review (5 clashes)")

    def _publish(self, paths, record, image_png: bytes, mask_png: Optional[bytes]) -> None:
        written: List[Path] = []
        try:
            # Sidecar and mask first, the image last: the image makes the sample visible to a reader.
            for path, data in ((paths["sidecar"], (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()),
                               (paths["mask"], mask_png), (paths["image"], image_png)):
                if path is None:
                    continue
                _write_new(path, data)
                written.append(path)
        except FileExistsError:
            self._unlink(written)
            raise
        except OSError as e:
            self._unlink(written)
            raise AdtrError(f"{self.option} {self.path}: cannot write the review ({e.strerror or e})") from None

    @staticmethod
    def _unlink(paths: List[Path]) -> None:
        for p in reversed(paths):  # the image (last written) goes first
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    def _rel(self, p: Path) -> str:
        return p.relative_to(self.path).as_posix()

    def remove(self, rid: str) -> Dict[str, Any]:
        """Undo a review by its id: its image, mask and sidecar go (the image first); returns the sidecar."""
        if not isinstance(rid, str) or not _ID.match(rid):
            raise AdtrError(f"review id {rid!r}: not an id this folder gives")
        found = self.find(rid)
        if found is None:
            raise AdtrError(f"{self.option} {self.path}: no review {rid!r} (already undone?)")
        sidecar, record = found
        files = [sidecar] + [self.path / record[k] for k in ("mask", "image") if record.get(k)]
        self._unlink(files)
        return record

    def find(self, rid: str):
        """(sidecar path, record) of review ``rid``, or None."""
        for sidecar in list(self.path.glob(f"train/{GOOD}/{rid}.json")) + list(self.path.glob(f"test/*/{rid}.json")):
            try:
                return sidecar, json.loads(sidecar.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
        return None

    def records(self) -> List[Dict[str, Any]]:
        """Every review in the folder (all writers'), oldest first by review time."""
        out = []
        for sidecar in list(self.path.glob(f"train/{GOOD}/*.json")) + list(self.path.glob("test/*/*.json")):
            if sidecar.name.startswith("."):
                continue
            try:
                record = json.loads(sidecar.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # removed meanwhile (an undo), or not ours
            if isinstance(record, dict) and record.get("format") == FORMAT:
                out.append(record)
        return sorted(out, key=lambda r: (r.get("reviewed") or "", r.get("id") or ""))


def _iso(epoch_s: float) -> str:
    t = _dt.datetime.fromtimestamp(epoch_s, tz=_dt.timezone.utc)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")
