"""Implicit INT8 calibration (TensorRT 8.x-10.x): data, cache files and the calibrator class.

Data preparation is GPU-free: backbone batches come from a folder of normal images through
``preprocessing.prepare_batch``; transformer batches are the backbone's outputs on those images,
computed with ONNX Runtime on the CPU from ``backbone.onnx``. Only the calibrator copies them to
device memory, through the ``CudaRuntime`` interface it is given (cuda-python or pycuda, see
``adtr_edge.cuda.make_cuda_runtime``).

Cache files: ``<graph>-<graph_sha[:12]>-<data_sha[:12]>-<preprocess_sha[:8]>-trt<version>.cache`` plus
a ``.json`` sidecar recording the full key. A matching cache is reused (TensorRT then skips
calibration); a cache for the same graph name with another key is stale and refused unless the
user asks to recalibrate, so a silently wrong INT8 engine cannot happen. The TensorRT version is
part of the key because NVIDIA does not promise that a calibration cache carries across versions
(its header names the version that wrote it).
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import AdtrError
from ..fileio import sha256_bytes, sha256_file, write_bytes_atomic, write_json_atomic
from ..metadata import BACKBONE, FEATURES, IMAGES
from ..preprocessing import PreprocessSpec, list_images, prepare_batch, read_image

# -- the TensorRT calibration cache text format ------------------------------------------------


@dataclass
class CalibrationTable:
    """``header`` (e.g. 'TRT-8601-EntropyCalibration2') and per-tensor scales."""

    header: str
    scales: dict[str, float]


def parse_cache(data: bytes, source: str = "calibration cache") -> CalibrationTable:
    """Parse 'header\\nname: hex(float32 bits)\\n...'. Malformed lines are a clear error."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise AdtrError(f"{source}: not a TensorRT calibration cache (not ASCII text)") from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or ":" in lines[0] or not lines[0].startswith("TRT-"):
        raise AdtrError(f"{source}: missing 'TRT-...' header line")
    scales = {}
    for n, line in enumerate(lines[1:], start=2):
        name, sep, hexval = line.rpartition(":")
        hexval = hexval.strip()
        if not sep or not name or not hexval:
            raise AdtrError(f"{source}: line {n} is not 'tensor: hex' ({line!r})")
        try:
            bits = int(hexval, 16)
            scales[name] = struct.unpack(">f", bits.to_bytes(4, "big"))[0]
        except (ValueError, OverflowError):
            raise AdtrError(f"{source}: line {n} has a bad scale {hexval!r}") from None
    return CalibrationTable(lines[0].strip(), scales)


def format_cache(table: CalibrationTable) -> bytes:
    """Inverse of ``parse_cache`` (TensorRT writes lowercase hex without padding)."""
    out = [table.header]
    for name, scale in table.scales.items():
        bits = struct.unpack(">I", struct.pack(">f", float(scale)))[0]
        out.append(f"{name}: {bits:x}")
    return ("\n".join(out) + "\n").encode("ascii")


# -- cache naming and staleness ------------------------------------------------------------------


@dataclass(frozen=True)
class CacheKey:
    graph: str
    graph_sha256: str
    data_sha256: str  # image list (and, for the transformer, the backbone that made its features)
    preprocess_sha256: str
    trt_version: str

    @property
    def filename(self) -> str:
        return (f"{self.graph}-{self.graph_sha256[:12]}-{self.data_sha256[:12]}-{self.preprocess_sha256[:8]}"
                f"-trt{self.trt_version}.cache")


def image_list_sha(paths: Sequence[Path]) -> str:
    """Hash of the calibration images: names and contents, in order."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).name.encode() + b"\0" + bytes.fromhex(sha256_file(p)))
    return h.hexdigest()


def preprocess_sha(spec: PreprocessSpec) -> str:
    return sha256_bytes(json.dumps(spec.to_dict(), sort_keys=True).encode())


def make_key(graph: str, graph_sha: str, images_sha: str, spec: PreprocessSpec, backbone_sha: str | None = None, *,
             trt_version: str) -> CacheKey:
    data = images_sha if backbone_sha is None else sha256_bytes(f"{images_sha}:{backbone_sha}".encode())
    return CacheKey(graph, graph_sha, data, preprocess_sha(spec), str(trt_version))


class CacheStore:
    """The calibration folder: find, validate, write and replace cache files."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def path(self, key: CacheKey) -> Path:
        return self.folder / key.filename

    def lookup(self, key: CacheKey, recalibrate: bool = False) -> Path | None:
        """The matching cache path if present; None when calibration must run.

        A cache for the same graph with another key is refused unless ``recalibrate``, in which
        case stale caches are removed (the new one is written when calibration finishes).
        """
        stale = [p for p in sorted(self.folder.glob(f"{key.graph}-*.cache")) if p.name != key.filename]
        if stale and not recalibrate:
            raise AdtrError(
                f"calibration cache {stale[0]} was made for another graph, image set, preprocessing or TensorRT version; "
                f"pass --recalibrate to replace it"
            )
        for p in stale:
            p.unlink()
            p.with_suffix(".json").unlink(missing_ok=True)
        path = self.path(key)
        if recalibrate and path.exists():
            path.unlink()
            path.with_suffix(".json").unlink(missing_ok=True)
            return None
        if path.is_file():
            parse_cache(path.read_bytes(), str(path))  # a corrupt cache must not reach TensorRT
            return path
        return None

    def write(self, key: CacheKey, data: bytes) -> Path:
        parse_cache(data, "calibration cache from TensorRT")
        target = self.path(key)
        try:
            path = write_bytes_atomic(target, data)
            write_json_atomic(path.with_suffix(".json"), {"key": asdict(key), "cache_sha256": sha256_bytes(data)})
        except OSError as e:
            raise AdtrError(f"cannot write calibration cache {target} ({e.strerror or e}); check --calib-dir") from e
        return path


# -- calibration data (GPU-free) ----------------------------------------------------------------


def calibration_images(folder: Path, count: int) -> list[Path]:
    paths = list_images(folder)
    if not paths:
        raise AdtrError(f"--calib-images {folder}: no images found")
    return paths[:count] if count > 0 else paths


def backbone_batches(paths: Sequence[Path], spec: PreprocessSpec, batch_size: int) -> list[np.ndarray]:
    """uint8 NHWC BGR batches of exactly ``batch_size`` (a short tail is dropped: TensorRT
    calibrates with one fixed shape)."""
    if batch_size < 1:
        raise AdtrError(f"calibration batch size must be >= 1, got {batch_size}")
    if len(paths) < batch_size:
        raise AdtrError(f"calibration needs at least {batch_size} images (one batch), got {len(paths)}")
    n = len(paths) // batch_size * batch_size
    return [prepare_batch([read_image(p) for p in paths[i:i + batch_size]], spec) for i in range(0, n, batch_size)]


def transformer_batches(backbone_onnx: Path, image_batches: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Backbone features for each image batch, computed on the CPU with ONNX Runtime."""
    try:
        import onnxruntime as ort  # noqa: PLC0415
    except ImportError:
        raise AdtrError("transformer INT8 calibration needs onnxruntime on the build machine (pip install onnxruntime)") from None
    sess = ort.InferenceSession(str(backbone_onnx), providers=["CPUExecutionProvider"])
    return [np.ascontiguousarray(sess.run([FEATURES], {IMAGES: b})[0], dtype=np.float32) for b in image_batches]


def input_name(graph: str) -> str:
    return IMAGES if graph == BACKBONE else FEATURES


# -- the calibrator -------------------------------------------------------------------------------


def make_entropy_calibrator(api, cuda, batches: Sequence[np.ndarray], tensor_name: str,
                            cache_read: Path | None, on_cache_written):
    """An ``IInt8EntropyCalibrator2`` instance feeding ``batches`` (host arrays) to ``tensor_name``.

    The subclass is defined here, at call time, because its base class lives in tensorrt.
    ``cache_read``: an existing cache to hand to TensorRT (calibration is then skipped);
    ``on_cache_written(bytes)`` stores the cache TensorRT produces.
    """
    trt = api.trt
    if not api.has_calibrators:
        raise AdtrError(f"TensorRT {api.version_string} has no calibrators; use adtr-edge quantize (Q/DQ)")

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        """TensorRT calls these from C++ and swallows what they raise (it prints the exception,
        then treats get_batch as "no more batches" and the cache as unwritten), so every callback
        keeps its first exception in ``error`` for the builder to raise after the build."""

        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches = list(batches)
            self.index = 0
            self.error: tuple[str, BaseException] | None = None
            self.nbytes = max(b.nbytes for b in self.batches) if self.batches else 0
            self.device = cuda.malloc(self.nbytes) if self.batches else None
            self.stream = cuda.create_stream()

        def _keep(self, where: str, exc: BaseException) -> None:
            if self.error is None:
                self.error = (where, exc)

        def get_batch_size(self):
            # Explicit-batch networks take the batch from the calibration profile; TensorRT
            # expects 1 here in that case.
            return 1

        def get_batch(self, names):
            try:
                return self._next_batch(names)
            except Exception as e:  # noqa: BLE001 (kept, raised by the builder; TensorRT would drop it)
                self._keep("get_batch", e)
                return None

        def _next_batch(self, names):
            if self.index >= len(self.batches):
                return None
            if tensor_name not in names:
                raise AdtrError(f"calibrator asked for {names}, expected {tensor_name!r}")
            batch = np.ascontiguousarray(self.batches[self.index])
            self.index += 1
            cuda.copy_to_device(self.device, batch.ctypes.data, batch.nbytes, self.stream)
            cuda.synchronize(self.stream)  # `batch` must outlive the copy
            return [int(self.device)]

        def read_calibration_cache(self):
            try:
                return cache_read.read_bytes() if cache_read is not None else None
            except Exception as e:  # noqa: BLE001
                self._keep(f"read_calibration_cache ({cache_read})", e)
                return None

        def write_calibration_cache(self, cache):
            if self.error is not None:
                # TensorRT took the failed callback as "no more batches" and calibrated on what it had:
                # storing that cache would let the next build reuse a calibration made from part of the data.
                return
            try:
                on_cache_written(bytes(memoryview(cache)))
            except Exception as e:  # noqa: BLE001 (an unsaved cache must fail the build)
                self._keep("write_calibration_cache", e)

        def release(self):
            if self.device is not None:
                cuda.free(self.device)
                self.device = None
            if self.stream is not None:
                cuda.destroy_stream(self.stream)
                self.stream = None

    return EntropyCalibrator()
