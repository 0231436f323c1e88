"""Clip embeddings: R(2+1)D-18's pooled 512-d feature (the input of ``fc``), L2-normalised.

One module computes logits and the embedding in the same forward pass, and both runtimes use
it: the torch path (CUDA actors, or ``model.runtime=torch``) wraps the network in it, and the
ONNX exporter traces it into the CPU graph as a second output (``export.py``,
graph ``uint8+embedding``). The logits are the same ops as ``net(x)``, so turning embeddings on
does not change a label. The device audit's graph stays logits-only.

Stored as ``embedding`` (fixed-size list of 512 float32, null when ``output.embeddings`` is
off); DuckDB reads it as ``FLOAT[512]`` through the ``clips`` view (``curate/sql.py``).
"""
from __future__ import annotations

import torch

from ..schema import EMBEDDING

EMBEDDING_NAME, EMBEDDING_TYPE = EMBEDDING


def l2_normalize(f: torch.Tensor) -> torch.Tensor:
    """Rows to unit length, in float32 whatever the autocast dtype was."""
    f = f.float()
    return f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)


class WithEmbedding(torch.nn.Module):
    """``net`` (torchvision VideoResNet) -> (logits, L2-normalised pooled feature). The body is
    VideoResNet.forward step by step (tests check the logits equal ``net(x)`` bit for bit)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.net
        x = n.layer4(n.layer3(n.layer2(n.layer1(n.stem(x)))))
        feat = n.avgpool(x).flatten(1)
        return n.fc(feat), l2_normalize(feat)
