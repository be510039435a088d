"""Pytest helpers: inject a simulated tensorrt version (and fake cudart) through sys.modules."""

from __future__ import annotations

import sys

import pytest

from .fake_trt import VERSIONS, make_cudart, make_tensorrt


@pytest.fixture(params=VERSIONS, ids=lambda v: "trt" + v.rsplit(".", 2)[0])
def trt_version(request):
    return request.param


@pytest.fixture
def standin(trt_version, monkeypatch):
    """(tensorrt stand-in, cudart stand-in, TrtApi, CudaRuntime) for one simulated version."""
    from adtr_edge.engine.trt_api import TrtApi
    from adtr_edge.cuda import CudaRuntime

    rt = make_cudart()
    trt = make_tensorrt(trt_version, cudart=rt)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt, rt, TrtApi(trt), CudaRuntime(rt)
