"""What the real TensorRT and CUDA bindings return or raise that the engine layer once ignored:
rejected optimization and calibration profiles, calibration caches of another TensorRT version,
calibrator callbacks that raise, no NVIDIA driver at all, and a transformer run before any backbone.
Each runs on the strict stand-ins in tests/trt_standin (no GPU here)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import adtr_edge.cuda as cuda_pkg
from adtr_edge.cuda import CudaRuntime
from adtr_edge.cuda import cudart as cuda_mod
from adtr_edge.engine.builder import BuildOptions, build_engines
from adtr_edge.engine.manifest import Profile
from adtr_edge.engine.trt_api import TrtApi
from adtr_edge.errors import AdtrError
from adtr_edge.runtime.backends.tensorrt import TensorRTBackend
from tests.trt_standin.fake_trt import V10, V86, make_cudart, make_tensorrt
from tests.trt_standin.graphs import make_export, write_images

REPO = Path(__file__).resolve().parents[1]


def _setup(tmp_path, version=V10):
    rt = make_cudart()
    trt = make_tensorrt(version, cudart=rt)
    api, cuda = TrtApi(trt), CudaRuntime(rt)
    export = make_export(tmp_path / "export", decomposed_ln=not api.has_normalization_layer)
    return trt, rt, api, cuda, export


def _build(tmp_path, api, cuda, export, out="engines", **kw):
    kw.setdefault("profile", Profile(1, 2, 4))
    opts = BuildOptions(calib_dir=kw.pop("calib_dir", tmp_path / "calib"), **kw)
    return build_engines(export, tmp_path / out, "m", opts, api=api, cuda=cuda, log=lambda s: None)


# -- profiles TensorRT rejects ----------------------------------------------------------------------


def test_a_rejected_optimization_profile_stops_the_build_in_one_line(tmp_path):
    trt, rt, api, cuda, export = _setup(tmp_path)
    trt._classes["IBuilderConfig"].add_optimization_profile = lambda self, profile: -1  # TensorRT's "invalid"
    with pytest.raises(AdtrError, match=r"TensorRT 10.3.0.30 rejected the optimization profile 'images' batch 1/2/4 "
                                        r"\(shape \(32, 32, 3\)\); check --min-batch") as e:
        _build(tmp_path, api, cuda, export, precision="fp16")
    assert "\n" not in str(e.value) and not trt._built


def test_the_standin_rejects_an_invalid_profile_like_tensorrt():
    trt = make_tensorrt(V10)
    builder = trt.Builder(trt.Logger())
    config, prof = builder.create_builder_config(), builder.create_optimization_profile()
    prof.set_shape("images", (4, 32, 32, 3), (2, 32, 32, 3), (1, 32, 32, 3))  # min > opt > max
    assert config.add_optimization_profile(prof) == -1 and config.set_calibration_profile(prof) is False


def test_a_rejected_calibration_profile_stops_the_int8_build(tmp_path):
    trt, rt, api, cuda, export = _setup(tmp_path)
    trt._classes["IBuilderConfig"].set_calibration_profile = lambda self, profile: False
    images = write_images(tmp_path / "good", n=4)
    with pytest.raises(AdtrError, match="TensorRT 10.3.0.30 rejected the INT8 calibration profile"):
        _build(tmp_path, api, cuda, export, precision="int8", calib_images=images, calib_batches=2)
    assert not trt._built


# -- calibration caches are per TensorRT version ---------------------------------------------------


def test_a_calibration_cache_of_another_tensorrt_version_is_not_reused(tmp_path):
    images = write_images(tmp_path / "good", n=4)
    trt86, _, api86, cuda86, export = _setup(tmp_path / "a", V86)
    _build(tmp_path, api86, cuda86, export, out="e86", precision="int8", calib_images=images, calib_batches=2)
    cache86 = sorted((tmp_path / "calib").glob("backbone-*.cache"))
    assert [p.name.endswith("-trt8.6.2.3.cache") for p in cache86] == [True]
    assert cache86[0].read_text().startswith("TRT-8601-")
    trt10, _, api10, cuda10, _ = _setup(tmp_path / "b", V10)
    with pytest.raises(AdtrError, match=r"backbone-.*-trt8\.6\.2\.3\.cache was made for another graph, image set, "
                                        r"preprocessing or TensorRT version; pass --recalibrate"):
        _build(tmp_path, api10, cuda10, export, out="e10", precision="int8", calib_images=images, calib_batches=2)
    report = _build(tmp_path, api10, cuda10, export, out="e10", precision="int8", calib_images=images, calib_batches=2,
                    recalibrate=True)
    assert trt10._built[0]["calibration"]["from_cache"] is False  # calibrated anew, not read from the 8.6 cache
    assert report.calibration["backbone"].endswith("-trt10.3.0.30.cache")
    assert [p.name for p in (tmp_path / "calib").glob("backbone-*.cache")] == [Path(report.calibration["backbone"]).name]


# -- a calibrator callback that raises ----------------------------------------------------------------


def test_an_exception_in_get_batch_fails_the_build_instead_of_calibrating_on_fewer_batches(tmp_path, monkeypatch):
    """TensorRT prints what get_batch raises and takes it as "no more batches": without the
    calibrator keeping the exception, this build would succeed on one batch of two."""
    trt, rt, api, cuda, export = _setup(tmp_path)
    copies = []
    real_copy = cuda.copy_to_device

    def copy_then_fail(dst, src, nbytes, stream):
        copies.append(nbytes)
        if len(copies) == 2:
            raise AdtrError("CUDA call cudaMemcpyAsync(H2D) failed: cudaErrorIllegalAddress")
        real_copy(dst, src, nbytes, stream)

    monkeypatch.setattr(cuda, "copy_to_device", copy_then_fail)
    images = write_images(tmp_path / "good", n=4)
    with pytest.raises(AdtrError, match=r"backbone.onnx: INT8 calibration failed in get_batch: CUDA call "
                                        r"cudaMemcpyAsync\(H2D\) failed: cudaErrorIllegalAddress") as e:
        _build(tmp_path, api, cuda, export, precision="int8", calib_images=images, calib_batches=2)
    assert isinstance(e.value.__cause__, AdtrError) and len(copies) == 2
    assert not (tmp_path / "engines/m/manifest.json").exists() and not list((tmp_path / "calib").glob("*.cache"))


# -- no NVIDIA driver ------------------------------------------------------------------------------


def test_no_driver_with_cuda_python_12_says_so_without_a_binding_pin(monkeypatch):
    # cuda-python 12.x without a driver: cudaDriverGetVersion gives 0, device calls cudaErrorInsufficientDriver.
    rt = make_cudart(driver_version=0, runtime_version=12090)
    monkeypatch.setattr(cuda_mod, "import_cudart", lambda: rt)
    ok, why = cuda_pkg.gpu_available()
    assert not ok and "no NVIDIA driver is loaded" in why and "pip install" not in why and "\n" not in why


def test_no_driver_with_cuda_python_11_is_an_adtr_error_not_a_runtime_error(monkeypatch):
    rt = make_cudart(driver_version=0, runtime_version=11080)

    def no_libcuda():
        raise RuntimeError("Failed to dlopen libcuda.so.1")  # what cuda-python 11.8 raises

    rt.cudaDriverGetVersion = no_libcuda
    monkeypatch.setattr(cuda_mod, "import_cudart", lambda: rt)
    with pytest.raises(AdtrError, match=r"no NVIDIA driver is loaded.*\(cuda-python: Failed to dlopen libcuda.so.1\)"):
        cuda_pkg.make_cuda_runtime()
    ok, why = cuda_pkg.gpu_available()
    assert not ok and why.startswith("no NVIDIA driver is loaded")


# -- the transformer alone on a fresh backend ------------------------------------------------------


def test_transformer_first_on_a_fresh_backend_times_only_what_ran(tmp_path):
    trt, rt, api, cuda, export = _setup(tmp_path)
    report = _build(tmp_path, api, cuda, export, precision="fp16")
    images = np.random.default_rng(3).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    features = ort.InferenceSession(str(export / "backbone.onnx")).run(None, {"images": images})[0]
    want = ort.InferenceSession(str(export / "transformer.onnx")).run(None, {"features": features})
    with TensorRTBackend(report.folder, api=api, cuda=cuda) as be:
        amap, score = be._run_transformer(features)  # no backbone event of the slot was ever recorded
        np.testing.assert_allclose(score, want[1], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(amap, want[0], rtol=1e-5, atol=1e-6)
        r = be.infer(images)  # and the full path still times both stages
    assert set(r.timings) >= {"backbone", "transformer", "backbone_gpu", "transformer_gpu"}


# -- scripts choose the CUDA binding like the toolkit ---------------------------------------------


def test_scripts_and_benchmarks_make_their_cuda_runtime_through_make_cuda_runtime():
    """A JetPack image may have pycuda and no cuda-python: only make_cuda_runtime() falls back."""
    direct = []
    for path in sorted((REPO / "scripts").glob("*.py")) + sorted((REPO / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
                if name in ("CudaRuntime", "PycudaRuntime"):
                    direct.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not direct, f"construct the CUDA runtime with make_cuda_runtime(): {direct}"


# -- the pycuda stand-in is asynchronous like a GPU ------------------------------------------------


def _pycuda_runtime():
    from adtr_edge.cuda import PycudaRuntime
    from tests.trt_standin.fake_pycuda import make_pycuda, primary_context

    drv = make_pycuda().driver
    return drv, PycudaRuntime(drv, primary_context(drv))


def test_pycuda_standin_copies_are_invisible_until_synchronised():
    drv, rt = _pycuda_runtime()
    host, hptr = rt.pinned_array((4,), np.float32)
    out, optr = rt.pinned_array((4,), np.float32)
    host[:] = [1, 2, 3, 4]
    dev, stream = rt.malloc(16), rt.create_stream()
    rt.copy_to_device(dev, hptr, 16, stream)
    host[:] = [5, 6, 7, 8]  # the copy reads the host buffer when it runs, as a GPU's would
    rt.copy_to_host(optr, dev, 16, stream)
    assert not out.any()  # queued, not run: reading now is the stale-data bug
    rt.synchronize(stream)
    np.testing.assert_array_equal(out, [5, 6, 7, 8])
    other = rt.create_stream()
    done = rt.create_event()
    rt.copy_to_device(dev, hptr, 16, stream)
    rt.record(done, stream)
    rt.wait_event(other, done)
    host[:] = 9
    rt.copy_to_host(optr, dev, 16, other)
    rt.synchronize(other)  # runs what `other` waits for on `stream` first
    np.testing.assert_array_equal(out, [9, 9, 9, 9])
    rt.free(dev)
    rt.free_host(hptr)
    rt.free_host(optr)


def test_pycuda_standin_event_times_need_the_work_to_have_run():
    drv, rt = _pycuda_runtime()
    a, b, s = rt.create_event(), rt.create_event(), rt.create_stream()
    rt.record(a, s)
    rt.record(b, s)
    with pytest.raises(AdtrError, match="device not ready"):
        rt.elapsed_ms(a, b)
    rt.event_synchronize(b)
    assert rt.elapsed_ms(a, b) >= 0.0
    with pytest.raises(AdtrError, match="not recorded"):
        rt.elapsed_ms(rt.create_event(), b)
