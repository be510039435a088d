"""Issue 12: what TensorRT and CUDA really do that the earlier stand-ins let slip, and the fixes.

Asynchronous streams, CUDA graphs per batch size, DLA, calibrator exceptions that TensorRT swallows,
one logger per process, cuda-python against the driver, pybind-style base classes. Every test
runs on the strict stand-ins in tests/trt_standin (no GPU here).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from adtr_edge.engine.builder import BuildOptions, build_engines
from adtr_edge.engine.manifest import Profile
from adtr_edge.engine.trt_api import TrtApi, process_logger
from adtr_edge.errors import AdtrError
import adtr_edge.cuda as cuda_pkg
from adtr_edge.cuda import cudart as cuda_mod
from adtr_edge.runtime.backends.tensorrt import TensorRTBackend
from adtr_edge.cuda import CudaRuntime
from tests.trt_standin.fake_trt import make_cudart, make_tensorrt
from tests.trt_standin.graphs import make_export, write_images

V85, V86, V10, V11 = "8.5.2.2", "8.6.2.3", "10.3.0.30", "11.1.0.7"


def _setup(tmp_path, version=V10, schedule="target_first", **cudart_kw):
    rt = make_cudart(schedule=schedule, **cudart_kw)
    trt = make_tensorrt(version, cudart=rt)
    api, cuda = TrtApi(trt), CudaRuntime(rt)
    export = make_export(tmp_path / "export", decomposed_ln=not api.has_normalization_layer)
    return trt, rt, api, cuda, export


def _build(tmp_path, api, cuda, export, name="m", log=lambda s: None, **kw):
    kw.setdefault("profile", Profile(1, 2, 4))
    opts = BuildOptions(calib_dir=kw.pop("calib_dir", tmp_path / "calib"), **kw)
    return build_engines(export, tmp_path / "engines", name, opts, api=api, cuda=cuda, log=log)


def _reference(export, images):
    f = ort.InferenceSession(str(export / "backbone.onnx")).run(None, {"images": images})[0]
    return ort.InferenceSession(str(export / "transformer.onnx")).run(None, {"features": f})


def _images(n, seed):
    return np.random.default_rng(seed).integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)


# -- the asynchronous stand-in itself --------------------------------------------------------------


def test_standin_copies_are_invisible_until_synchronised():
    rt = make_cudart()
    cuda = CudaRuntime(rt)
    host, hptr = cuda.pinned_array((4,), np.float32)
    out, optr = cuda.pinned_array((4,), np.float32)
    host[:] = [1, 2, 3, 4]
    dev, stream = cuda.malloc(16), cuda.create_stream()
    cuda.copy_to_device(dev, hptr, 16, stream)
    cuda.copy_to_host(optr, dev, 16, stream)
    assert not out.any()  # queued, not run: reading now is the stale-data bug
    cuda.synchronize(stream)
    np.testing.assert_array_equal(out, host)
    cuda.copy_to_host(optr, dev, 16, stream)
    with pytest.raises(AdtrError, match="cudaErrorIllegalAddress"):
        cuda.free(dev)  # queued work still uses it
    cuda.synchronize(stream)
    cuda.free(dev)


def test_standin_event_times_need_the_work_to_have_run():
    rt = make_cudart()
    cuda = CudaRuntime(rt)
    a, b, s = cuda.create_event(), cuda.create_event(), cuda.create_stream()
    cuda.record(a, s)
    cuda.record(b, s)
    with pytest.raises(AdtrError, match="cudaErrorNotReady"):
        cuda.elapsed_ms(a, b)
    cuda.event_synchronize(b)
    assert cuda.elapsed_ms(a, b) >= 0


def test_standin_pybind_bases_need_their_init():
    trt = make_tensorrt(V10)

    class Lazy(trt.ILogger):
        def __init__(self):  # forgets trt.ILogger.__init__(self)
            self.seen = []

        def log(self, severity, msg):
            self.seen.append(msg)

    with pytest.raises(TypeError, match=r"ILogger.__init__\(\) must be called"):
        Lazy()

    class LazyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            pass

    with pytest.raises(TypeError, match=r"IInt8EntropyCalibrator2.__init__\(\) must be called"):
        LazyCalibrator()


def test_standin_refuses_dla_with_dynamic_shapes_and_uint8_not_into_cast(tmp_path):
    trt, rt, api, cuda, export = _setup(tmp_path, V86)

    class Recorder(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages = []

        def log(self, severity, msg):
            self.messages.append(msg)

    logger = Recorder()
    builder = trt.Builder(logger)
    net = api.create_network(builder)
    api.parse_onnx(net, logger, export / "backbone.onnx")
    config = builder.create_builder_config()
    prof = builder.create_optimization_profile()
    prof.set_shape("images", (1, 32, 32, 3), (2, 32, 32, 3), (4, 32, 32, 3))
    config.add_optimization_profile(prof)
    config.set_flag(trt.BuilderFlag.FP16)
    api.use_dla(config, 0)
    assert builder.build_serialized_network(net, config) is None  # dynamic batch on DLA
    assert "DLA does not support dynamic shapes" in logger.messages[-1]
    # A UINT8 input must go straight into a Cast.
    m = onnx.load(str(export / "backbone.onnx"))
    cast, transpose = m.graph.node[0], m.graph.node[1]
    cast.input[0], cast.output[0], transpose.input[0], transpose.output[0] = "t", "nchw", "images", "t"
    m.graph.node[0].CopyFrom(transpose)
    m.graph.node[1].CopyFrom(cast)
    m.graph.node[0].name, m.graph.node[1].name = "to_nchw", "cast_in"
    onnx.save(m, str(tmp_path / "bad.onnx"))
    net2 = api.create_network(builder)
    api.parse_onnx(net2, logger, tmp_path / "bad.onnx")
    config2 = builder.create_builder_config()
    prof2 = builder.create_optimization_profile()
    prof2.set_shape("images", (1, 32, 32, 3), (2, 32, 32, 3), (4, 32, 32, 3))
    config2.add_optimization_profile(prof2)
    assert builder.build_serialized_network(net2, config2) is None
    assert logger.messages[-1] == "UINT8 network input images must feed a Cast layer directly"


# -- 3. cuda-python against the driver -------------------------------------------------------------


@pytest.mark.parametrize("driver, runtime, pin", [(12040, 13000, "cuda-python>=12,<13"), (11040, 12080, "cuda-python>=11.4,<12")])
def test_cuda_bindings_newer_than_the_driver_is_one_line(monkeypatch, driver, runtime, pin):
    rt = make_cudart(driver_version=driver, runtime_version=runtime)
    with pytest.raises(AdtrError, match=rf'driver supports CUDA {driver // 1000}\.{driver % 1000 // 10}.*pip install "{pin}"') as e:
        CudaRuntime(rt)
    assert "\n" not in str(e.value) and "needs driver >= 580" in str(e.value)
    monkeypatch.setattr(cuda_mod, "import_cudart", lambda: rt)
    ok, why = cuda_pkg.gpu_available()
    assert not ok and pin in why
    assert isinstance(CudaRuntime(make_cudart(driver_version=13000, runtime_version=12080)), CudaRuntime)  # older bindings are fine


# -- 4. DLA ----------------------------------------------------------------------------------------


def test_dla_needs_a_static_profile_and_is_refused_on_11_0_to_11_3(tmp_path):
    trt, rt, api, cuda, export = _setup(tmp_path, V10)
    with pytest.raises(AdtrError, match="--dla-core needs a static batch profile.*got 1/2/4"):
        _build(tmp_path, api, cuda, export, precision="fp16", dla_core=0)
    trt11, _, api11, cuda11, export11 = _setup(tmp_path / "11", V11)
    with pytest.raises(AdtrError, match=r"TensorRT 11.1.0.7 does not support DLA builds \(11.0-11.3\)"):
        _build(tmp_path / "11", api11, cuda11, export11, precision="fp16", dla_core=0, profile=Profile(2, 2, 2))
    assert not trt11._built


@pytest.mark.parametrize("version", [V86, V10])
def test_dla_engine_records_its_core_reports_gpu_fallback_and_loads_on_that_core(tmp_path, version):
    trt, rt, api, cuda, export = _setup(tmp_path, version)
    lines = []
    report = _build(tmp_path, api, cuda, export, precision="fp16", dla_core=1, profile=Profile(2, 2, 2), log=lines.append)
    entry = report.manifest["engines"]["backbone"]
    assert entry["dla_core"] == 1 and report.manifest["engines"]["transformer"]["dla_core"] is None
    assert entry["dla_gpu_fallback"] == trt._built[0]["dla_gpu_fallback"] == ["cast_in", "to_nchw", "bgr_to_rgb"]
    assert any("fall back to the GPU: cast_in, to_nchw, bgr_to_rgb" in line for line in lines)
    x = _images(2, 1)
    with TensorRTBackend(report.folder, api=api, cuda=cuda) as be:
        r = be.infer(x)
    assert trt._deserialized[0] == {"dla": 1, "runtime_DLA_core": 1}
    np.testing.assert_allclose(r.score, _reference(export, x)[1], rtol=1e-5, atol=1e-6)


# -- 5. calibrator exceptions ----------------------------------------------------------------------


def test_standin_swallows_calibrator_exceptions_like_pyint8(tmp_path, capfd):
    trt = make_tensorrt(V10)
    api = TrtApi(trt)

    class Broken(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)

        def read_calibration_cache(self):
            return None

        def get_batch(self, names):
            raise RuntimeError("boom")

    logger = trt.Logger()
    builder = trt.Builder(logger)
    net = api.create_network(builder)
    api.parse_onnx(net, logger, make_export(tmp_path / "e") / "backbone.onnx")
    config = builder.create_builder_config()
    prof = builder.create_optimization_profile()
    prof.set_shape("images", (2, 32, 32, 3), (2, 32, 32, 3), (2, 32, 32, 3))
    config.add_optimization_profile(prof)
    api.set_precision_flags(config, True, True, False)
    api.set_calibrator(config, Broken(), prof)
    assert builder.build_serialized_network(net, config) is None  # no Python exception comes out
    assert "[ERROR] Exception caught in get_batch(): boom" in capfd.readouterr().err


def test_unwritable_calibration_cache_fails_the_build_in_one_line(tmp_path):
    trt, rt, api, cuda, export = _setup(tmp_path, V10)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should go (root ignores permission bits)")
    images = write_images(tmp_path / "good", n=4)
    with pytest.raises(AdtrError, match=r"backbone.onnx: INT8 calibration failed in write_calibration_cache: cannot write "
                                        r"calibration cache .*not-a-folder/calib/backbone-") as e:
        _build(tmp_path, api, cuda, export, precision="int8", calib_images=images, calib_batches=2,
               calib_dir=blocker / "calib")
    assert "\n" not in str(e.value) and isinstance(e.value.__cause__, AdtrError)
    assert isinstance(e.value.__cause__.__cause__, OSError)
    assert not (tmp_path / "engines/m/manifest.json").exists() and not rt._device


# -- 6. one logger per process ---------------------------------------------------------------------


def test_int8_build_while_a_backend_is_alive_reports_its_errors_in_its_own_sink(tmp_path, monkeypatch):
    trt, rt, api, cuda, export = _setup(tmp_path, V10)
    _build(tmp_path, api, cuda, export, precision="fp16")
    from adtr_edge.engine import calibration as calib

    monkeypatch.setattr(calib, "backbone_batches", lambda paths, spec, n: [])  # TensorRT: "calibrator gave no batches"
    images = write_images(tmp_path / "good", n=4)
    with TensorRTBackend(tmp_path / "engines/m", api=api, cuda=cuda) as be:
        with pytest.raises(AdtrError, match="failed to build the engine .*: calibrator gave no batches"):
            _build(tmp_path, api, cuda, export, name="int8", precision="int8", calib_images=images, calib_batches=2)
        assert be._logger is process_logger(api)
        assert not be.log_sink.errors  # the build's error did not land in the backend's sink
        r = be.infer(_images(1, 0))  # and the backend still works
    assert r.score.shape == (1,)
    assert not trt._logger_warnings  # never a second logger while one was in use


# -- 7. CUDA graphs per batch size; failed captures -------------------------------------------------


@pytest.mark.parametrize("version", [V10, V11])
def test_cuda_graphs_with_changing_batch_sizes_match_plain_enqueues(tmp_path, version):
    trt, rt, api, cuda, export = _setup(tmp_path, version)
    _build(tmp_path, api, cuda, export, precision="fp32")
    batches = [_images(n, i) for i, n in enumerate((2, 3, 2, 3, 1, 2, 4, 1))]
    with TensorRTBackend(tmp_path / "engines/m", api=api, cuda=cuda, cuda_graphs=True) as be:
        got = [r.score.copy() for r in be.infer_many(batches)]
        assert be.graphs_active and rt._calls.count("cudaGraphLaunch") >= 4
        assert sorted(be.stages["backbone"].graph_contexts) == [1, 2, 3, 4]
    with TensorRTBackend(tmp_path / "engines/m", api=api, cuda=cuda) as plain:
        ref = [r.score.copy() for r in plain.infer_many(batches)]
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(a, b)
    assert not rt._graphs and not rt._graph_execs and not rt._faults


def test_failed_capture_destroys_its_graph(tmp_path):
    trt, rt, api, cuda, export = _setup(tmp_path, V10)
    _build(tmp_path, api, cuda, export, precision="fp32")
    trt._refuse_capture = True
    with TensorRTBackend(tmp_path / "engines/m", api=api, cuda=cuda, cuda_graphs=True) as be:
        with pytest.raises(AdtrError, match="enqueue failed during CUDA graph capture"):
            be.infer(_images(2, 0))
        assert not rt._graphs and not rt._graph_execs  # nothing leaked
    assert not rt._device and not rt._host


# -- the orderings the backend relies on (each one removed makes one of these fail) ----------------


def test_backbone_waits_until_the_transformer_has_read_the_slot(tmp_path):
    """Ordering inside the two-slot pipeline: a backbone enqueue for slot s must not overwrite the
    features of slot s before the transformer enqueued earlier has read them."""
    trt, rt, api, cuda, export = _setup(tmp_path, V10, schedule="others_first")
    _build(tmp_path, api, cuda, export, precision="fp32")
    a, b = _images(2, 1), _images(2, 2)
    with TensorRTBackend(tmp_path / "engines/m", api=api, cuda=cuda) as be:
        n = be._enqueue_backbone(a, 0)
        be._enqueue_transformer(n, 0)
        be._enqueue_backbone(b, 0)  # the next batch into the same slot, before collecting
        r = be._collect(n, 0)
        be.cuda.synchronize(be.stages["backbone"].stream)
    np.testing.assert_allclose(r.score, _reference(export, a)[1], rtol=1e-5, atol=1e-6)


def test_host_stage_times_include_the_device_work(tmp_path):
    trt, rt, api, cuda, export = _setup(tmp_path, V10)
    _build(tmp_path, api, cuda, export, precision="fp32")
    trt._kernel_seconds = 0.02
    with TensorRTBackend(tmp_path / "engines/m", api=api, cuda=cuda) as be:
        t = be.infer(_images(2, 0)).timings
    assert t["backbone_gpu"] >= 20 and t["backbone"] >= t["backbone_gpu"], t


def test_abandoned_stream_of_batches_deactivates_cleanly(tmp_path):
    trt, rt, api, cuda, export = _setup(tmp_path, V10)
    _build(tmp_path, api, cuda, export, precision="fp32")
    with TensorRTBackend(tmp_path / "engines/m", api=api, cuda=cuda) as be:
        for r in be.infer_many([_images(2, i) for i in range(4)]):
            break  # the caller stops early: the next backbone is still queued
    assert not rt._faults and not rt._device and not rt._host


def test_engine_manifest_without_dla_core_still_loads(tmp_path):
    """Engine folders written before the DLA core was recorded load as GPU engines."""
    trt, rt, api, cuda, export = _setup(tmp_path, V10)
    report = _build(tmp_path, api, cuda, export, precision="fp32")
    path = report.folder / "manifest.json"
    doc = json.loads(path.read_text())
    for e in doc["engines"].values():
        e.pop("dla_core")
    path.write_text(json.dumps(doc))
    with TensorRTBackend(report.folder, api=api, cuda=cuda) as be:
        assert be.infer(_images(1, 0)).score.shape == (1,)
