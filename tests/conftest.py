"""Session fixtures (anomalib's habit): one generated MVTec-style dataset, one tiny trained
checkpoint and one export of it, shared by every test that needs a real model.

The tiny model (64x64 input, 8x8 grid, 1+1 layers, d_model 64) trains in seconds on 2 cores; it is
not accurate, but it exercises every real code path: the bundled Lite0 weights, the feature cache,
safetensors checkpoints, ONNX export with metadata, and the runtime backends.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MAGNETIC_TILE = SHARED_DATA / "magnetic_tile"


def tiny_model_config():
    from adtr_edge.config import ModelConfig

    # The shipped recipe's devices (sine positions, neighbour-masked attention, Mahalanobis head, the
    # regional image score), so every export, runtime and parity test runs the graph users get; and the
    # optional pooled map part with its clipped cells, so that its graph is held to the same parity.
    return ModelConfig(input_size=(64, 64), feature_stride=8, d_model=64, nhead=4, num_encoder_layers=1,
                       num_decoder_layers=1, dim_feedforward=128, pool_kernel=8, pos_embed="sine", neighbor_mask=3,
                       score="mahalanobis", region_grid=4, map_pool=5, map_pool_clip=0.99)


def refit_beside_plain(checkpoint, data, tmp_path, **setting):
    """``checkpoint`` refitted as trained and with ``setting`` (one head setting of ``refit_head``):
    (plain result, set result, plain model, set model, set checkpoint record), to compare the two."""
    from adtr_edge.train.checkpoint import load_checkpoint
    from adtr_edge.train.refit import refit_head

    plain = refit_head(checkpoint, data, tmp_path / "plain", device="cpu")
    changed = refit_head(checkpoint, data, tmp_path / "set", device="cpu", **setting)
    (m0, _), (m1, c1) = load_checkpoint(plain.out), load_checkpoint(changed.out)
    return plain, changed, m0, m1, c1


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory) -> Path:
    from adtr_edge.data.generate import generate_sample_dataset

    root = tmp_path_factory.mktemp("data")
    return generate_sample_dataset(root, n_train=24, n_test_good=8, n_test_defect=8, size=(96, 96), seed=0)


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory, sample_dataset) -> Path:
    from adtr_edge.config import TrainConfig
    from adtr_edge.data.datasets import load_dataset
    from adtr_edge.train.loop import train_model

    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    # per-location: the graph every runtime test reads keeps the regional term and the pooled map part
    cfg = TrainConfig(epochs=4, batch_size=8, lr=2e-3, val_fraction=0.2, device="cpu", head="per-location")
    train_model(load_dataset(sample_dataset, "train"), tiny_model_config(), cfg, out, progress=False)
    return out


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory, trained_checkpoint) -> Path:
    from adtr_edge.export.onnx_export import export_checkpoint

    out = tmp_path_factory.mktemp("export") / "tiny"
    export_checkpoint(trained_checkpoint, out, opset=17)
    return out


@pytest.fixture(scope="session")
def magnetic_tile() -> Path:
    if not (MAGNETIC_TILE / "train" / "good").is_dir():
        pytest.skip(f"real dataset not found at {MAGNETIC_TILE} (see ../shared/data/README.md)")
    return MAGNETIC_TILE


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    """A small contract-following export (tests/runtime_fakes.py: fake graphs, real metadata), one
    per test module, for the runtime tests that need a folder but not a trained model."""
    from tests.runtime_fakes import write_fake_export

    return write_fake_export(tmp_path_factory.mktemp("fake_export") / "model")


@pytest.fixture
def captured_run(monkeypatch):
    """``run_stream`` replaced by a recorder, for tests of what a CLI hands it (stream, --config)."""
    import adtr_edge.runtime.pipeline as pipeline

    calls = []

    def fake_run_stream(model_dir, source, **kw):
        calls.append({"model_dir": Path(model_dir), "source": source, **kw})
        return {"errors": [], "stopped_by": "end of source"}

    monkeypatch.setattr(pipeline, "run_stream", fake_run_stream)
    return calls
