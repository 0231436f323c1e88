"""Run the model on uint8 clips: normalise where the model runs, forward, softmax, top-k.

Two runtimes behind one class, sharing loading, softmax and top-k:
- ``torch``: PyTorch; on CUDA with autocast (bf16/fp16), channels_last_3d and cudnn benchmark.
- ``onnxruntime``: the exported graph (normalisation inside it, uint8 in) on ONNX Runtime's
  CPU provider, with the same logits (max |d| ~3e-7); measured on a 2-core Xeon, 1.67x
  PyTorch eager at 1 thread and 1.15x at 2 (README, Performance).
``model.runtime=auto`` picks onnxruntime on CPU actors and torch on CUDA actors.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import ModelConfig
from .embeddings import WithEmbedding
from .model import Normalize, amp_dtype, categories, load_model, pick_device


@dataclass
class Scores:
    probs: np.ndarray  # float32 (N, 400) softmax
    topk_ids: np.ndarray  # int (N, k), best first
    topk_scores: np.ndarray  # float32 (N, k)
    embedding: np.ndarray | None = None  # float32 (N, 512), L2-normalised; with embeddings=True


def topk(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k ids and scores per row, best first (ties: lower id first)."""
    ids = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(probs, ids, axis=1)


def softmax(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32)), dim=1).numpy()


def resolve_runtime(runtime: str, device: torch.device) -> str:
    """``auto`` -> onnxruntime on CPU, torch on CUDA."""
    if runtime == "auto":
        return "torch" if device.type == "cuda" else "onnxruntime"
    if runtime == "onnxruntime" and device.type == "cuda":
        raise ValueError("model.runtime=onnxruntime runs on CPU: use runtime=torch (or auto) on CUDA actors")
    return runtime


class ClipClassifier:
    """R(2+1)D-18 on one device. ``__call__`` takes uint8 (N, T, H, W, 3) clips."""

    def __init__(self, cfg: ModelConfig, storage=None, embeddings: bool = False):
        self.cfg, self.embeddings = cfg, embeddings  # embeddings: also the pooled 512-d feature (embeddings.py)
        loaded = load_model(cfg.weights, cfg.seed, storage)
        self.weights_id, self.is_random = loaded.weights_id, loaded.is_random
        self.device = pick_device(cfg.device)
        self.backend = resolve_runtime(cfg.runtime, self.device)
        self.threads = max(1, round(cfg.num_cpus))
        self.labels = categories()
        if self.backend == "onnxruntime":
            self._init_ort(loaded)
        else:
            self._init_torch(loaded)

    def _init_torch(self, loaded) -> None:
        self._pinned: torch.Tensor | None = None
        self.normalize = Normalize().to(self.device)
        self.net = (WithEmbedding(loaded.module) if self.embeddings else loaded.module).to(self.device)
        self.amp = amp_dtype(self.cfg.amp) if self.device.type == "cuda" else None
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            # amp=none means fp32 logits: no TF32 convolutions or matmuls behind the user's back.
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = self.amp is not None
            self.net = self.net.to(memory_format=torch.channels_last_3d)
            self.runtime = f"torch-cuda-{self.cfg.amp}"
        else:
            torch.set_num_threads(self.threads)
            self.runtime = "torch-cpu-fp32"

    def _init_ort(self, loaded) -> None:
        from .export import INPUT_NAME, cached_export, cpu_session

        path = cached_export(loaded.module, self.weights_id, graph="uint8+embedding" if self.embeddings else "uint8")
        self.session = cpu_session(path, self.threads)  # round(model.num_cpus) threads
        self.input_name = INPUT_NAME
        self.runtime = "onnxruntime-cpu-fp32"
        torch.set_num_threads(1)  # only the softmax runs in torch here

    def logits(self, clips: np.ndarray) -> np.ndarray:
        return self.forward(clips)[0]

    def forward(self, clips: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(logits, embedding or None)."""
        if self.backend == "onnxruntime":
            out = self.session.run(None, {self.input_name: np.ascontiguousarray(clips, dtype=np.uint8)})
        else:
            out = self._torch_logits(clips)
        return out[0], (out[1] if self.embeddings else None)

    def _host_tensor(self, clips: np.ndarray) -> torch.Tensor:
        """uint8 clips as a host tensor: on CUDA actors a reused pinned buffer (one copy, async
        upload; the caller's .cpu() syncs before the next call refills it); on CPU, the clips."""
        clips = np.ascontiguousarray(clips, dtype=np.uint8)
        if self.device.type != "cuda":
            return torch.from_numpy(clips if clips.flags.writeable else clips.copy())
        if self._pinned is None or len(self._pinned) < len(clips) or self._pinned.shape[1:] != clips.shape[1:]:
            self._pinned = torch.empty((max(len(clips), self.cfg.effective_batch_size), *clips.shape[1:]),
                                       dtype=torch.uint8, pin_memory=True)
        host = self._pinned[: len(clips)]
        host.numpy()[...] = clips
        return host

    @torch.inference_mode()
    def _torch_logits(self, clips: np.ndarray) -> list[np.ndarray]:
        x = self._host_tensor(clips).to(self.device, non_blocking=True)
        x = self.normalize(x)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            out = self.net(x)
        return [o.float().cpu().numpy() for o in (out if isinstance(out, tuple) else (out,))]

    def __call__(self, clips: np.ndarray) -> Scores:
        logits, embedding = self.forward(clips)
        probs = softmax(logits)
        ids, scores = topk(probs, self.cfg.topk)
        return Scores(probs.astype(np.float32), ids, scores.astype(np.float32), embedding)
