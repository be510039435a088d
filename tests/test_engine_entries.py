"""The typed reader of an engine folder's manifest (folder.engine_entries): what build-engine writes
reads back as EngineEntry per graph, and a malformed entry is one error naming the manifest and the
graph. bench reads an engine folder's precision through it (it used to re-parse the manifest, with
a fallback that would have raised AttributeError on the digest string the builder writes as ``key``)."""

from __future__ import annotations

import json

import pytest
from tests.runtime_fakes import write_fake_export

from adtr_edge import folder as mf
from adtr_edge.bench import resolve_targets
from adtr_edge.errors import AdtrError


def _entry(precision="fp16", profile=(1, 2, 4), **extra):
    return {"file": "x.engine", "sha256": "ab" * 32, "onnx_sha256": "cd" * 32, "precision": precision,
            "profile": list(profile), "key": "ef" * 32, "key_fields": {"precision": precision}, **extra}


def _engine_folder(tmp_path, engines):
    path = write_fake_export(tmp_path / "e")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(kind="tensorrt", format="adtr-edge-engine/1", engines=engines, trt_version="10.3.0",
                    gpu={"name": "Orin", "compute_capability": "8.7"}, source=str(path))
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_what_build_engine_writes_reads_back_typed(tmp_path):
    path = _engine_folder(tmp_path, {"backbone": _entry("int8", dla_core=0), "transformer": _entry("fp16")})
    entries = mf.engine_entries(mf.read_model_folder(path))
    assert set(entries) == {"backbone", "transformer"}
    bb = entries["backbone"]
    assert (bb.graph, bb.precision, bb.profile, bb.dla_core, bb.key) == ("backbone", "int8", (1, 2, 4), 0, "ef" * 32)
    assert entries["transformer"].dla_core is None


def test_bench_names_an_engine_folders_precisions(tmp_path):
    path = _engine_folder(tmp_path, {"backbone": _entry("int8"), "transformer": _entry("fp16")})
    (target,) = resolve_targets([path])
    assert (target.kind, target.backend, target.precision) == ("tensorrt", "tensorrt", "fp16+int8")


@pytest.mark.parametrize("engines, message", [
    ({"backbone": _entry()}, "no 'transformer' engine listed"),
    ({"backbone": _entry(precision=None), "transformer": _entry()}, "engine 'backbone' has no precision"),
    ({"backbone": _entry(), "transformer": _entry(profile=(1, 2))}, r"engine 'transformer' profile \[1, 2\] is not \[min, opt, max\]"),
    ({"backbone": _entry(dla_core="0"), "transformer": _entry()}, "engine 'backbone' dla_core '0' is not a core number"),
])
def test_a_malformed_entry_is_one_line_naming_the_graph(tmp_path, engines, message):
    path = _engine_folder(tmp_path, engines)
    with pytest.raises(AdtrError, match=message):
        mf.engine_entries(mf.read_model_folder(path))
    with pytest.raises(AdtrError, match=message):  # bench says the same, not AttributeError
        resolve_targets([path])


def test_an_export_is_not_an_engine_folder(tmp_path):
    with pytest.raises(AdtrError, match="not an engine folder's manifest"):
        mf.engine_entries(mf.read_model_folder(write_fake_export(tmp_path / "x")))
