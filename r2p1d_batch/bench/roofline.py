"""Roofline of the model stage: the work in one clip (GFLOP, counted from the graph) and the
fp32 matmul peak of this machine at a given thread count (measured), so clips/s can be read
as a share of what the cores can do at all. Convolutions run as matmuls underneath (oneDNN,
MLAS), so no CPU runtime beats the sgemm peak by more than noise."""
from __future__ import annotations

import math
import time
from functools import cache

import torch
from torch import nn

from ..decoding.preprocess import torch_threads


@cache
def model_gflop_per_clip(frames: int = 16, size: int = 112) -> float:
    """2 x multiply-adds of every Conv3d and Linear in one R(2+1)D-18 forward of one clip.
    Counted with forward hooks on a meta-device forward: shapes only, no arithmetic, no memory.
    BatchNorm and ReLU are left out (0.25 GFLOP at 16x112x112, 0.3%)."""
    from torchvision.models.video import r2plus1d_18

    with torch.device("meta"):
        net = r2plus1d_18(num_classes=400).eval()
    macs = 0

    def count(m: nn.Module, _inp, out: torch.Tensor) -> None:
        nonlocal macs
        per_out = m.in_channels // m.groups * math.prod(m.kernel_size) if isinstance(m, nn.Conv3d) else m.in_features
        macs += out.numel() * per_out

    for m in net.modules():
        if isinstance(m, (nn.Conv3d, nn.Linear)):
            m.register_forward_hook(count)
    with torch.no_grad():
        net(torch.empty(1, 3, frames, size, size, device="meta"))
    return 2 * macs / 1e9


def sgemm_gflops(threads: int, n: int = 2048, seconds: float = 1.0) -> float:
    """fp32 matmul peak: the best of repeated n x n x n torch matmuls on ``threads`` threads
    for ``seconds`` (the best, not the mean: a roofline is what the cores can do at all)."""
    with torch_threads(threads):
        a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
        torch.mm(a, b, out=c)  # warm-up: packing buffers, thread pool
        best, end = 0.0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            torch.mm(a, b, out=c)
            best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
        return best


def needed_note(eager_gflops: float, peak_gflops: float, threads: int, factor: float = 2.0) -> str:
    """What 'factor x eager' would take, against the measured peak."""
    need = factor * eager_gflops
    return (f"{factor:g}x eager would need {need:.0f} GFLOP/s = {need / peak_gflops:.0%} of the measured fp32 "
            f"matmul peak ({peak_gflops:.0f} GFLOP/s at {threads} thread{'s' * (threads > 1)})")
