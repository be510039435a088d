"""Checkpoints: safetensors for tensors plus a JSON document; no pickles anywhere.

A checkpoint is a folder:
    model.safetensors   every tensor of the model (backbone included, so it is self-contained)
    checkpoint.json     model/train config, thresholds, training-data summary, history
    train_state.*       optimiser state and epoch, for --resume (optional)
``checkpoint.json`` is written last: a folder without it is not a checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .. import __version__
from ..config import ModelConfig, TrainConfig
from ..errors import AdtrError
from ..fileio import atomic_path, write_json_atomic
from ..postprocessing import Thresholds

FORMAT = "adtr-edge-checkpoint/1"
MODEL_FILE = "model.safetensors"
META_FILE = "checkpoint.json"
STATE_FILE = "train_state.safetensors"
STATE_META = "train_state.json"


@dataclass
class Checkpoint:
    model_config: ModelConfig
    train_config: TrainConfig
    thresholds: Thresholds | None
    data_summary: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def _save_tensors(tensors: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))


def save_checkpoint(folder: str | Path, model, ckpt: Checkpoint) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _save_tensors(model.state_dict(), folder / MODEL_FILE)
    doc = {
        "format": FORMAT,
        "toolkit_version": __version__,
        "model": ckpt.model_config.to_dict(),
        "train": ckpt.train_config.to_dict(),
        "thresholds": ckpt.thresholds.to_dict() if ckpt.thresholds else None,
        "data": ckpt.data_summary,
        "history": ckpt.history,
        "extra": ckpt.extra,
    }
    write_json_atomic(folder / META_FILE, doc)
    return folder


def read_checkpoint_meta(folder: str | Path) -> Checkpoint:
    folder = Path(folder)
    meta = folder / META_FILE
    if not folder.is_dir():
        raise AdtrError(f"checkpoint folder not found: {folder}")
    if not meta.is_file() or not (folder / MODEL_FILE).is_file():
        raise AdtrError(f"not a checkpoint (needs {META_FILE} and {MODEL_FILE}): {folder}")
    try:
        doc = json.loads(meta.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdtrError(f"corrupt checkpoint metadata {meta}: {e}") from None
    if doc.get("format") != FORMAT:
        raise AdtrError(f"{meta}: unknown checkpoint format {doc.get('format')!r}")
    return Checkpoint(
        model_config=ModelConfig.from_dict(doc["model"]),
        train_config=TrainConfig.from_dict(doc["train"]),
        thresholds=Thresholds.from_dict(doc["thresholds"]) if doc.get("thresholds") else None,
        data_summary=doc.get("data", {}),
        history=doc.get("history", []),
        extra=doc.get("extra", {}),
    )


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the model from a checkpoint folder: returns (model in eval mode, Checkpoint)."""
    from ..model import build_model

    folder = Path(folder)
    ckpt = read_checkpoint_meta(folder)
    model = build_model(ckpt.model_config, pretrained=False)
    try:
        state = load_file(str(folder / MODEL_FILE), device="cpu")
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise AdtrError(f"corrupt checkpoint weights {folder / MODEL_FILE}: {e}") from None
    # Checkpoints from before unused backbone blocks were pruned carry their weights: ignore them.
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own or not k.startswith("backbone.cnn.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise AdtrError(f"checkpoint {folder} does not match its config: {first}") from None
    # Built without downloading weights, but holding the trained (frozen) backbone: name its source, so
    # that feature caches written in training are found again (train.features.feature_cache_key).
    model.backbone.weights_source = (ckpt.extra or {}).get("weights_source") or model.backbone.weights_source
    return model.to(device).eval(), ckpt


def save_train_state(folder: str | Path, optimizer, epoch: int, extra: dict) -> None:
    """Optimiser tensors to safetensors (flattened names), scalars to JSON."""
    folder = Path(folder)
    tensors, scalars = {}, {"epoch": epoch, "extra": extra, "param_groups": optimizer.state_dict()["param_groups"], "state": {}}
    for pid, st in optimizer.state_dict()["state"].items():
        scalars["state"][str(pid)] = {}
        for k, v in st.items():
            if torch.is_tensor(v) and v.ndim > 0:
                tensors[f"{pid}.{k}"] = v
            else:
                scalars["state"][str(pid)][k] = float(v)
    _save_tensors(tensors, folder / STATE_FILE)
    write_json_atomic(folder / STATE_META, scalars)


def load_train_state(folder: str | Path, optimizer) -> tuple[int, dict]:
    folder = Path(folder)
    if not (folder / STATE_FILE).is_file() or not (folder / STATE_META).is_file():
        raise AdtrError(f"--resume {folder}: no training state in it (was it saved by adtr-edge train?)")
    meta = json.loads((folder / STATE_META).read_text(encoding="utf-8"))
    tensors = load_file(str(folder / STATE_FILE), device="cpu")
    state = {}
    for pid, scal in meta["state"].items():
        st = {k: torch.tensor(v) for k, v in scal.items()}
        for name, t in tensors.items():
            p, _, k = name.partition(".")
            if p == pid:
                st[k] = t
        state[int(pid)] = st
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(meta["epoch"]), meta.get("extra", {})
