"""Pick the torch device: "auto" uses CUDA when a GPU answers, else the CPU."""

from __future__ import annotations

import torch

from ..errors import AdtrError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AdtrError(f"--device {name}: no CUDA GPU is available to torch")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise AdtrError(f"--device {name}: use auto, cpu or cuda[:N]")
    return torch.device(name)
