"""Run the model on uint8 clips: normalise on the device, forward, softmax, top-k.

The CPU and CUDA paths share everything but device placement, autocast and memory format.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .config import ModelConfig
from .model import Normalize, amp_dtype, categories, load_model, pick_device


@dataclass
class Scores:
    probs: np.ndarray  # float32 (N, 400) softmax
    topk_ids: np.ndarray  # int (N, k), best first
    topk_scores: np.ndarray  # float32 (N, k)


def topk(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k ids and scores per row, best first (ties: lower id first)."""
    ids = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(probs, ids, axis=1)


class ClipClassifier:
    """R(2+1)D-18 on one device. ``__call__`` takes uint8 (N, T, H, W, 3) clips."""

    def __init__(self, cfg: ModelConfig, storage=None):
        self.cfg = cfg
        loaded = load_model(cfg.weights, cfg.seed, storage)
        self.weights_id, self.is_random = loaded.weights_id, loaded.is_random
        self.device = pick_device(cfg.device)
        self.normalize = Normalize().to(self.device)
        self.net = loaded.module.to(self.device)
        self.amp = amp_dtype(cfg.amp) if self.device.type == "cuda" else None
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            self.net = self.net.to(memory_format=torch.channels_last_3d)
            self.runtime = f"torch-cuda-{cfg.amp}"
        else:
            torch.set_num_threads(max(1, int(cfg.num_cpus)))
            self.runtime = "torch-cpu-fp32"
        self.labels = categories()

    @torch.inference_mode()
    def logits(self, clips: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(clips)).to(self.device, non_blocking=True)
        x = self.normalize(x)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            out = self.net(x)
        return out.float().cpu().numpy()

    def __call__(self, clips: np.ndarray) -> Scores:
        logits = self.logits(clips)
        probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
        ids, scores = topk(probs, self.cfg.topk)
        return Scores(probs.astype(np.float32), ids, scores.astype(np.float32))
