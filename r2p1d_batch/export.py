"""Export R(2+1)D-18 to ONNX: the graph ONNX Runtime runs on CPU workers and the artefact
compiled for a device. Exports are cached per weights id, so each actor exports at most once
per machine (and a pool shares one file)."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Optional

import torch

from .model import Normalize

INPUT_NAME, OUTPUT_NAME = "video", "class_probs"
OPSET = 17


class _NormalizedNet(torch.nn.Module):
    """uint8 (N, T, H, W, C) in, logits out: normalisation inside the graph."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.normalize, self.net = Normalize(), net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


def export_onnx(
    module: torch.nn.Module,
    path: str | os.PathLike,
    *,
    normalize_inside: bool = False,
    dynamic_batch: bool = True,
    clip_shape: tuple[int, int, int] = (16, 112, 112),
) -> Path:
    """Write ``module`` (eval mode, CPU) as ONNX. Input ``video``: normalised float NCTHW, or
    uint8 NTHWC with ``normalize_inside``; output ``class_probs``: raw logits (no softmax),
    the names qai-hub-models uses. Written to a temp file and renamed: readers never see half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t, h, w = clip_shape
    net = (_NormalizedNet(module) if normalize_inside else module).eval().cpu()
    example = torch.zeros((1, t, h, w, 3), dtype=torch.uint8) if normalize_inside else torch.zeros((1, 3, t, h, w))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with torch.inference_mode(False), torch.no_grad():
        # The TorchScript exporter (dynamo=False): seconds for this model, no extra deps.
        torch.onnx.export(
            net, (example,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None,
            opset_version=OPSET, dynamo=False,
        )
    tmp.replace(path)
    return path


def cache_dir() -> Path:
    return Path(os.environ.get("R2P1D_ONNX_CACHE") or Path(tempfile.gettempdir()) / "r2p1d_batch-onnx")


def cached_export(module: torch.nn.Module, weights_id: str, *, normalize_inside: bool = False,
                  root: Optional[str | os.PathLike] = None) -> Path:
    """The ONNX file for ``weights_id``, exported on first use (keyed by weights, torch
    version and options)."""
    key = f"{weights_id}|torch={torch.__version__}|opset={OPSET}|norm={normalize_inside}"
    path = Path(root or cache_dir()) / f"r2plus1d_18-{hashlib.sha256(key.encode()).hexdigest()[:16]}.onnx"
    if not path.is_file():
        export_onnx(module, path, normalize_inside=normalize_inside)
    return path
