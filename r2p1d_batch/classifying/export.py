"""Export R(2+1)D-18 to ONNX: the graph ONNX Runtime runs on CPU workers, and the device graph
compiled for phones (AI Hub) and replayed by the audit. One exporter, two input conventions:

- ``uint8``: uint8 clips (N, T, H, W, C) as the decode stage emits them; the CPU runtime.
- ``device``: RGB in [0, 1], (N, 3, T, H, W) float32, like the model zoo's resnet_2plus1d.

Both normalise inside the graph with the preset's mean/std and output ``class_probs`` = raw
logits. Exports are cached per weights id, so each actor exports at most once per machine.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import torch

from .embeddings import EMBEDDING_NAME, WithEmbedding
from .model import Normalize, normalization
from .ort import INPUT_NAME, OPSET, cached_path

OUTPUT_NAME = "class_probs"
CLIP_SHAPE = (3, 16, 112, 112)  # C, T, H, W of one device-graph clip


class DeviceGraph(torch.nn.Module):
    """RGB clips in [0, 1], (N, 3, T, H, W) -> logits, normalising inside the graph."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        mean, std = normalization()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1, 1))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.net((video - self.mean) / self.std)


class Uint8Graph(torch.nn.Module):
    """uint8 clips (N, T, H, W, C) -> logits: the classifier's own normalisation, in the graph."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.normalize, self.net = Normalize(), net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


def _example(graph: str) -> torch.Tensor:
    c, t, h, w = CLIP_SHAPE
    if graph.startswith("uint8"):
        return torch.zeros((1, t, h, w, c), dtype=torch.uint8)
    return torch.rand((1, c, t, h, w))


def export_onnx(module: torch.nn.Module, path: str | os.PathLike, *, graph: str = "device",
                dynamic_batch: bool = True) -> Path:
    """Write ``module`` wrapped as ``graph`` (``device`` | ``uint8``) to ONNX. Written to a temp
    file and renamed: concurrent readers never see half a file."""
    wrapper = {"device": DeviceGraph, "uint8": Uint8Graph,
               "uint8+embedding": lambda m: Uint8Graph(WithEmbedding(m))}[graph]  # CPU runtime, output.embeddings
    outputs = [OUTPUT_NAME, EMBEDDING_NAME] if graph == "uint8+embedding" else [OUTPUT_NAME]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = wrapper(module).eval().cpu()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    for name in ("onnxscript", "onnx_ir", "torch.onnx"):  # the exporter's pass-by-pass chatter
        logging.getLogger(name).setLevel(logging.WARNING)
    with torch.inference_mode(False), torch.no_grad():
        # The TorchScript exporter (dynamo=False): seconds for this model, no extra deps.
        torch.onnx.export(
            net, (_example(graph),), str(tmp), input_names=[INPUT_NAME], output_names=outputs,
            dynamic_axes={n: {0: "batch"} for n in [INPUT_NAME, *outputs]} if dynamic_batch else None,
            opset_version=OPSET, dynamo=False,
        )
    tmp.replace(path)
    return path


def cached_export(module: torch.nn.Module, weights_id: str, *, graph: str = "uint8",
                  root: Optional[str | os.PathLike] = None) -> Path:
    """The ONNX file for ``weights_id``, exported on first use."""
    path = cached_path(weights_id, graph=graph, root=root)
    if not path.is_file():
        export_onnx(module, path, graph=graph)
    return path


