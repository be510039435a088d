"""pycuda as the CUDA binding: the runtime, binding selection, and the TensorRT flow end to end on
simulated TensorRT versions with a fake pycuda (passed explicitly, never left in sys.modules)."""

from __future__ import annotations

import importlib.util
import logging
import threading

import numpy as np
import onnxruntime as ort
import pytest

import adtr_edge.cuda as cuda_pkg
import adtr_edge.cuda.cudart as cuda_mod
import adtr_edge.cuda.pycuda_binding as cuda_pycuda
from adtr_edge.engine.builder import BuildOptions, build_engines
from adtr_edge.engine.manifest import Profile
from adtr_edge.engine.trt_api import TrtApi
from adtr_edge.errors import AdtrError
from adtr_edge.runtime.backends.tensorrt import TensorRTBackend
from adtr_edge.cuda import CudaRuntime, PycudaRuntime, make_cuda_runtime
from tests.trt_standin.fake_pycuda import importable, make_pycuda, primary_context
from tests.trt_standin.fake_trt import make_cudart, make_tensorrt
from tests.trt_standin.graphs import make_export, write_images

# 8.5 (oldest supported), 8.6 and 10.x have calibrators; 11.x is covered by the cudart tests.
PYCUDA_VERSIONS = ("8.5.2.2", "8.6.2.3", "10.3.0.30")


def _pycuda(**kw):
    pkg = make_pycuda(**kw)
    ctx = primary_context(pkg.driver)
    return pkg.driver, ctx


@pytest.fixture
def pycuda_rt():
    drv, ctx = _pycuda()
    return drv, PycudaRuntime(drv, ctx)


@pytest.fixture
def no_cuda_python(monkeypatch):
    def missing():
        raise AdtrError("cuda-python is not installed (No module named 'cuda')")
    monkeypatch.setattr(cuda_mod, "import_cudart", missing)


# -- the runtime itself ----------------------------------------------------------------------------


def test_pycuda_runtime_moves_bytes_and_times_events(pycuda_rt):
    drv, rt = pycuda_rt
    src, src_ptr = rt.pinned_array((3, 5), np.float32)
    dst, dst_ptr = rt.pinned_array((3, 5), np.float32)
    assert src.flags.c_contiguous and src.dtype == np.float32 and src.base is not None
    src[:] = np.arange(15, dtype=np.float32).reshape(3, 5)
    dev = rt.malloc(src.nbytes)
    stream = rt.create_stream()
    start, end = rt.create_event(), rt.create_event()
    rt.record(start, stream)
    rt.copy_to_device(dev, src_ptr, src.nbytes, stream)
    rt.copy_to_host(dst_ptr, dev, src.nbytes, stream)
    rt.record(end, stream)
    rt.synchronize(stream)
    np.testing.assert_array_equal(dst, src)
    assert rt.elapsed_ms(start, end) >= 0.0
    assert rt.stream_handle(stream) == stream.handle and isinstance(rt.stream_handle(stream), int)
    assert stream._flags == cuda_pycuda.CU_STREAM_NON_BLOCKING
    rt.free(dev)
    rt.free_host(src_ptr)
    rt.free_host(dst_ptr)
    assert not drv._allocations and not drv._host
    rt.destroy_event(start)
    rt.destroy_stream(stream)
    assert not rt.supports_graphs and rt.name == "pycuda"


def test_pycuda_runtime_errors_are_adtr_errors(pycuda_rt):
    drv, rt = pycuda_rt
    dev = rt.malloc(16)
    host, ptr = rt.pinned_array((8,), np.float32)  # 32 bytes: more than the allocation holds
    stream = rt.create_stream()
    with pytest.raises(AdtrError, match=r"memcpy_htod_async \(pycuda\) failed"):
        rt.copy_to_device(dev, ptr, host.nbytes, stream)
    with pytest.raises(AdtrError, match=r"Event.time_till \(pycuda\) failed"):
        rt.elapsed_ms(rt.create_event(), rt.create_event())  # never recorded
    rt.free(dev)
    with pytest.raises(AdtrError, match="not an allocation"):
        rt.free(dev)
    with pytest.raises(AdtrError, match="not a pinned array"):
        rt.free_host(dev)


def test_pycuda_runtime_needs_a_context_and_binds_other_threads():
    pkg = make_pycuda()
    pkg.driver.init()
    with pytest.raises(AdtrError, match="autoprimaryctx"):
        PycudaRuntime(pkg.driver)  # no context current and none given
    drv, ctx = _pycuda()
    rt = PycudaRuntime(drv)  # picks the current (primary) context up
    assert rt.context is ctx
    got = {}

    def worker():  # a thread with no context of its own: the runtime pushes the primary one
        got["ptr"] = rt.malloc(64)
        got["ctx"] = drv.Context.get_current()

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert got["ctx"] is ctx and got["ptr"] in drv._allocations
    rt.free(got["ptr"])


def test_device_info_names_the_gpu():
    drv, ctx = _pycuda(gpu_name="NVIDIA Jetson Xavier NX", cc=(7, 2), devices=2)
    rt = PycudaRuntime(drv, ctx)
    assert rt.device_count() == 2
    assert rt.device_info() == rt.device_info(0)
    info = rt.device_info(1)
    assert (info.index, info.name, info.compute_capability) == (1, "NVIDIA Jetson Xavier NX", "7.2")


def test_import_pycuda_uses_the_primary_context():
    pkg = make_pycuda(gpu_name="NVIDIA Orin Nano")
    with importable(pkg):
        driver, context = cuda_pycuda.import_pycuda()
        assert driver is pkg.driver and driver.Context.get_current() is context
        rt = PycudaRuntime()
        assert rt.device_info().name == "NVIDIA Orin Nano"
    assert "Context.push" in pkg.driver._calls and hasattr(pkg, "autoprimaryctx")


# -- selection -------------------------------------------------------------------------------------


def test_make_cuda_runtime_selection(monkeypatch, no_cuda_python):
    drv, ctx = _pycuda()
    monkeypatch.setattr(cuda_pycuda, "import_pycuda", lambda: (drv, ctx))
    assert isinstance(make_cuda_runtime("auto"), PycudaRuntime)
    assert isinstance(make_cuda_runtime("pycuda"), PycudaRuntime)
    with pytest.raises(AdtrError, match="cuda-python is not installed"):
        make_cuda_runtime("cuda-python")
    with pytest.raises(AdtrError, match="--cuda-binding 'cupy'"):
        make_cuda_runtime("cupy")
    ok, name = cuda_pkg.gpu_available()
    assert ok and name == "NVIDIA Fake Jetson"


def test_auto_prefers_cuda_python(monkeypatch):
    rt = make_cudart()
    monkeypatch.setattr(cuda_mod, "import_cudart", lambda: rt)
    monkeypatch.setattr(cuda_pycuda, "import_pycuda", lambda: pytest.fail("pycuda must not be tried"))
    got = make_cuda_runtime("auto")
    assert isinstance(got, CudaRuntime) and got.rt is rt and got.supports_graphs


def test_neither_binding_is_one_clear_error(monkeypatch, no_cuda_python):
    def missing():
        raise AdtrError("pycuda is not installed (No module named 'pycuda')")
    monkeypatch.setattr(cuda_pycuda, "import_pycuda", missing)
    with pytest.raises(AdtrError, match="no CUDA binding.*cuda-python is not installed.*pycuda is not installed") as e:
        make_cuda_runtime()
    assert "\n" not in str(e.value)
    ok, why = cuda_pkg.gpu_available()
    assert not ok and "pycuda" in why


@pytest.mark.skipif(importlib.util.find_spec("pycuda") is not None, reason="pycuda is installed here")
def test_real_import_without_pycuda_says_how_to_install():
    with pytest.raises(AdtrError, match="pip install pycuda"):
        cuda_pycuda.import_pycuda()


def test_backend_rejects_unknown_binding(tmp_path):
    with pytest.raises(AdtrError, match="--cuda-binding"):
        TensorRTBackend(tmp_path, cuda_binding="cupy")


# -- TensorRT flow end to end with pycuda ----------------------------------------------------------


@pytest.fixture(params=PYCUDA_VERSIONS, ids=lambda v: "trt" + v.rsplit(".", 2)[0])
def trt_pycuda(request):
    v = request.param
    drv, ctx = _pycuda(gpu_name="NVIDIA Fake Orin", cc=(8, 7))
    api = TrtApi(make_tensorrt(v))  # no cudart: execute_async_v3 runs at once on the pycuda handle
    return api, drv, PycudaRuntime(drv, ctx)


def _build(tmp_path, api, cuda, **kw):
    export = make_export(tmp_path / "export", decomposed_ln=not api.has_normalization_layer)
    opts = BuildOptions(calib_dir=tmp_path / "calib", profile=Profile(1, 2, 4), **kw)
    build_engines(export, tmp_path / "engines", "m", opts, api=api, cuda=cuda, log=lambda s: None)
    return export


def test_int8_build_calibrates_through_pycuda_and_backend_matches_onnxruntime(tmp_path, trt_pycuda):
    api, drv, cuda = trt_pycuda
    images = write_images(tmp_path / "good", n=6)
    export = _build(tmp_path, api, cuda, precision="int8", calib_images=images, calib_batches=3)
    header = api.trt._built[0]
    from adtr_edge.engine import calibration as calib
    from adtr_edge.preprocessing import PreprocessSpec
    batches = calib.backbone_batches(calib.calibration_images(images, 6), PreprocessSpec(32, 32), 2)
    # The calibrator's batches crossed pycuda's memcpy into the memory the fake TensorRT read.
    assert header["calibration"]["batches"] == 3 and header["calibration"]["amax"] == max(float(b.max()) for b in batches)
    assert not drv._allocations  # the calibrator freed its device buffer

    be = TensorRTBackend(tmp_path / "engines/m", api=api, cuda=cuda)
    rng = np.random.default_rng(7)
    inputs = [rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8) for n in (1, 3, 4, 2)]
    sb = ort.InferenceSession(str(export / "backbone.onnx"))
    st = ort.InferenceSession(str(export / "transformer.onnx"))
    with be:
        results = list(be.infer_many(inputs))
        single = be.infer(inputs[1])
        feats = be.run_backbone(inputs[2])
        assert drv._allocations and drv._host
    for x, r in zip(inputs, results):
        amap, score = st.run(None, {"features": sb.run(None, {"images": x})[0]})
        np.testing.assert_allclose(r.anomaly_map, amap, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(r.score, score, atol=1e-5, rtol=1e-5)
        assert {"backbone", "transformer", "backbone_gpu", "transformer_gpu"} <= set(r.timings)
        assert r.timings["backbone_gpu"] >= 0.0
    np.testing.assert_array_equal(single.score, results[1].score)
    np.testing.assert_allclose(feats, sb.run(None, {"images": inputs[2]})[0], atol=1e-5)
    assert {"memcpy_htod_async", "memcpy_dtoh_async", "Stream.wait_for_event", "Event.time_till"} <= set(drv._calls)
    assert not drv._allocations and not drv._host  # everything freed on deactivate


def test_cuda_graphs_fall_back_with_a_logged_reason(tmp_path, trt_pycuda, caplog):
    api, drv, cuda = trt_pycuda
    _build(tmp_path, api, cuda, precision="fp32")
    be = TensorRTBackend(tmp_path / "engines/m", api=api, cuda=cuda, cuda_graphs=True)
    if not api.cuda_graphs_allowed:  # the TensorRT version check still comes first
        with pytest.raises(AdtrError, match="TensorRT 10"):
            be.activate()
        return
    imgs = [np.random.default_rng(i).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8) for i in range(3)]
    with caplog.at_level(logging.WARNING, logger="adtr_edge.runtime.backends.tensorrt"):
        with be:
            out = [r.score.copy() for r in be.infer_many(imgs)]
            assert be.cuda_graphs and not be.graphs_active
    assert any("CUDA graphs off" in m and "pycuda" in m for m in caplog.messages)
    with TensorRTBackend(tmp_path / "engines/m", api=api, cuda=cuda) as plain:
        ref = [r.score for r in plain.infer_many(imgs)]
    for a, b in zip(out, ref):
        np.testing.assert_array_equal(a, b)


def test_backend_and_builder_pick_pycuda_when_cuda_python_is_missing(tmp_path, monkeypatch, no_cuda_python):
    drv, ctx = _pycuda(gpu_name="NVIDIA Fake Orin", cc=(8, 7))
    monkeypatch.setattr(cuda_pycuda, "import_pycuda", lambda: (drv, ctx))
    api = TrtApi(make_tensorrt("10.3.0.30"))
    images = write_images(tmp_path / "good", n=4)
    export = make_export(tmp_path / "export")
    # No cuda= given: build_engines and the backend choose the binding themselves.
    build_engines(export, tmp_path / "engines", "m", BuildOptions(precision="int8", calib_images=images, calib_batches=2,
                  calib_dir=tmp_path / "calib", profile=Profile(1, 2, 2)), api=api, log=lambda s: None)
    assert api.trt._built[0]["calibration"]["batches"] == 2 and "mem_alloc" in drv._calls
    x = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    with TensorRTBackend(tmp_path / "engines/m", api=api, cuda_binding="auto") as be:
        assert isinstance(be.cuda, PycudaRuntime)
        r = be.infer(x)
    amap, score = ort.InferenceSession(str(export / "transformer.onnx")).run(
        None, {"features": ort.InferenceSession(str(export / "backbone.onnx")).run(None, {"images": x})[0]})
    np.testing.assert_allclose(r.score, score, atol=1e-5, rtol=1e-5)
    with pytest.raises(AdtrError, match="cuda-python is not installed"):
        TensorRTBackend(tmp_path / "engines/m", api=api, cuda_binding="cuda-python").activate()


def test_both_bindings_implement_the_cuda_protocol():
    """TensorRTBackend and the calibrator are typed against adtr_edge.cuda.CudaMemory: both
    bindings must offer every member of it (and cuda-python the graph capture too)."""
    from adtr_edge.cuda import CudaGraphs, CudaMemory

    def members(proto):
        names = set(getattr(proto, "__annotations__", {}))
        return names | {n for n in vars(proto) if not n.startswith("_")}

    for cls in (CudaRuntime, PycudaRuntime):
        missing = sorted(n for n in members(CudaMemory) if not hasattr(cls, n))
        assert not missing, f"{cls.__name__} lacks {missing}"
    assert not [n for n in members(CudaGraphs) if not hasattr(CudaRuntime, n)]
    assert PycudaRuntime.supports_graphs is False and PycudaRuntime.graphs_unsupported_reason
