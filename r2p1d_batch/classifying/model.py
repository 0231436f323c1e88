"""The model: build R(2+1)D-18, load weights, on-device normalisation.

Weights, mean and std come from torchvision's weights enum; the ids and category names, which
need no torch, from ``weights.py`` (re-exported here). A run never labels with random weights
by accident: ``random`` must be asked for, and its id says so.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Optional

import torch
from torchvision.models.video import R2Plus1D_18_Weights, r2plus1d_18

from .weights import (  # noqa: F401 (re-exported: the model's facts in one import)
    KINETICS_ID,
    MODEL_NAME,
    WeightsError,
    categories,
    checkpoint_id,
    is_kinetics,
    kinetics_available,
    kinetics_checkpoint_path,
    weights_id,
)

KINETICS = R2Plus1D_18_Weights.KINETICS400_V1


def normalization() -> tuple[tuple[float, ...], tuple[float, ...]]:
    p = KINETICS.transforms()
    return tuple(p.mean), tuple(p.std)


@dataclass(frozen=True)
class LoadedModel:
    module: torch.nn.Module
    weights_id: str  # recorded in every output row
    is_random: bool


def _load_kinetics() -> dict:
    path = kinetics_checkpoint_path()
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    try:
        return KINETICS.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # URLError, timeouts, proxies: all mean "not reachable"
        raise WeightsError(
            f"Kinetics-400 weights are not cached and could not be downloaded ({type(e).__name__}: {e}).\n"
            f"  Put {os.path.basename(KINETICS.url)} (from {KINETICS.url}) at {path}\n"
            f"  (or set TORCH_HOME), or pass model.weights=/path/or/s3://checkpoint.pth,\n"
            f"  or model.weights=random for a smoke run (labels then mean nothing)."
        ) from None


def _read_checkpoint(spec: str, storage=None) -> tuple[dict, str]:
    from ..storage import filesystem

    try:
        fs, path = filesystem(spec, storage)
        with fs.open(path, "rb") as f:
            blob = f.read()
    except FileNotFoundError:
        raise WeightsError(f"checkpoint not found: {spec}") from None
    except Exception as e:
        raise WeightsError(f"cannot read checkpoint {spec}: {type(e).__name__}: {e}") from None
    digest = hashlib.sha256(blob).hexdigest()
    import io

    try:
        obj = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{spec} is not a PyTorch checkpoint: {type(e).__name__}: {e}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsError(f"{spec}: expected a state_dict, found {type(obj).__name__}")
    obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj, checkpoint_id(path, digest)


def load_model(spec: str, seed: int = 0, storage=None) -> LoadedModel:
    """``kinetics400`` | ``random`` | a checkpoint path (local or s3://), in eval mode on CPU."""
    if spec == "random":
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            module = r2plus1d_18(weights=None, num_classes=len(categories()))
        return LoadedModel(module.eval(), weights_id(spec, seed), True)
    module = r2plus1d_18(weights=None, num_classes=len(categories()))
    if is_kinetics(spec):
        state, wid = _load_kinetics(), KINETICS_ID
    else:
        state, wid = _read_checkpoint(spec, storage)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise WeightsError(f"{spec}: not r2plus1d_18 Kinetics-400 weights ({first})") from None
    return LoadedModel(module.eval(), wid, False)


class Normalize(torch.nn.Module):
    """uint8 (N, T, H, W, C) -> normalised float (N, C, T, H, W), on whatever device x is."""

    def __init__(self) -> None:
        super().__init__()
        mean, std = normalization()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 4, 1, 2, 3).float().div_(255.0)
        return (x - self.mean) / self.std


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("model.device=cuda but this actor sees no CUDA device")
        return torch.device("cuda")
    return torch.device("cpu")


def amp_dtype(name: str) -> Optional[torch.dtype]:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name)
