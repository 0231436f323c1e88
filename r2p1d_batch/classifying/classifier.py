"""Run the model on uint8 clips: normalise where the model runs, forward, softmax, top-k.

Two runtimes behind one class, sharing loading, softmax and top-k:
- ``torch``: PyTorch; on CUDA with autocast (bf16/fp16), channels_last_3d and cudnn benchmark.
- ``onnxruntime``: the exported graph (normalisation inside it, uint8 in) on ONNX Runtime's
  CPU provider, with the same logits (max |d| ~3e-7); measured on a 2-core Xeon, 1.67x
  PyTorch eager at 1 thread and 1.15x at 2 (docs/performance.md).
``model.runtime=auto`` picks onnxruntime on CPU actors and torch on CUDA actors. With
``model.int8=DIR`` a CPU actor runs the int8 graph ``r2p1d quantize`` wrote there instead
(int8.py; never torch, logits and embedding from the same graph).

A CPU actor given its weights id (the driver's) whose ONNX export is already cached opens the
session and never imports torch: ~6 s and ~0.5 GiB less per actor start.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import ModelConfig
from .ort import INPUT_NAME, cached_path, cpu_graph, cpu_session
from .scores import softmax, topk
from .weights import categories, is_random


@dataclass
class Scores:
    probs: np.ndarray  # float32 (N, 400) softmax
    topk_ids: np.ndarray  # int (N, k), best first
    topk_scores: np.ndarray  # float32 (N, k)
    embedding: np.ndarray | None = None  # float32 (N, 512), L2-normalised; with embeddings=True


def resolve_runtime(runtime: str, device) -> str:
    """``auto`` -> onnxruntime on CPU, torch on CUDA (``device``: a torch.device)."""
    if runtime == "auto":
        return "torch" if device.type == "cuda" else "onnxruntime"
    if runtime == "onnxruntime" and device.type == "cuda":
        raise ValueError("model.runtime=onnxruntime runs on CPU: use runtime=torch (or auto) on CUDA actors")
    return runtime


def no_cuda_here() -> bool:
    """True where this process can see no CUDA device, known without torch: no NVIDIA device
    node, or CUDA_VISIBLE_DEVICES set empty (as Ray does for an actor that holds no GPU)."""
    return os.environ.get("CUDA_VISIBLE_DEVICES") == "" or not os.path.exists("/dev/nvidiactl")


def cached_cpu_graph(cfg: ModelConfig, weights_id: str | None, embeddings: bool) -> Path | None:
    """The cached ONNX export an actor can run without torch: where ``cfg`` resolves to ONNX
    Runtime on the CPU here and ``weights_id``'s export exists; else None."""
    if weights_id is None or cfg.runtime == "torch" or cfg.device == "cuda":
        return None
    if cfg.device == "auto" and not no_cuda_here():
        return None  # auto may mean CUDA: torch decides, as without a cache
    path = cached_path(weights_id, graph=cpu_graph(embeddings))
    return path if path.is_file() else None


class ClipClassifier:
    """R(2+1)D-18 on one device. ``__call__`` takes uint8 (N, T, H, W, 3) clips."""

    def __init__(self, cfg: ModelConfig, storage=None, embeddings: bool = False, weights_id: str | None = None):
        """``weights_id``: the id the driver computed for ``cfg.weights``; with it, a CPU actor
        whose export is cached starts without torch (the id names the exact weights)."""
        self.cfg, self.embeddings = cfg, embeddings  # embeddings: also the pooled 512-d feature (embeddings.py)
        self.threads = max(1, round(cfg.num_cpus))
        self.labels = categories()
        if cfg.int8:
            self._open_int8(storage)
            return
        cached = cached_cpu_graph(cfg, weights_id, embeddings)
        if cached is not None:
            self.weights_id, self.is_random = weights_id, is_random(weights_id)
            self.backend = "onnxruntime"
            self._open_ort(cached)
            return
        from .model import load_model, pick_device

        loaded = load_model(cfg.weights, cfg.seed, storage)
        self.weights_id, self.is_random = loaded.weights_id, loaded.is_random
        self.device = pick_device(cfg.device)
        self.backend = resolve_runtime(cfg.runtime, self.device)
        if self.backend == "onnxruntime":
            self._init_ort(loaded)
        else:
            self._init_torch(loaded)

    def _init_torch(self, loaded) -> None:
        import torch

        from .embeddings import WithEmbedding
        from .model import Normalize, amp_dtype

        self._pinned = None  # a pinned host buffer, on CUDA actors
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
        from .export import cached_export

        self._open_ort(cached_export(loaded.module, self.weights_id, graph=cpu_graph(self.embeddings)))

    def _open_int8(self, storage) -> None:
        """The int8 graph of ``model.int8`` (its report checked by the driver: weights, budget,
        sha256). CPU only: ONNX Runtime's integer kernels are the CPU provider's."""
        from . import int8

        if self.cfg.device == "cuda" or self.cfg.num_gpus > 0 or self.cfg.runtime == "torch":
            raise int8.Int8Error("model.int8 runs on CPU actors (onnxruntime): unset it for GPU or torch actors")
        report = int8.read_report(self.cfg.int8, storage)
        self.weights_id, self.is_random = report["weights"], is_random(report["weights"])
        self.backend = "onnxruntime"
        self._open_ort(int8.local_graph(self.cfg.int8, report, storage))
        self.runtime = int8.runtime_id(report)

    def _open_ort(self, path: Path) -> None:
        self.session = cpu_session(path, self.threads)  # round(model.num_cpus) threads
        self.input_name = INPUT_NAME
        self.runtime = "onnxruntime-cpu-fp32"

    def logits(self, clips: np.ndarray) -> np.ndarray:
        return self.forward(clips)[0]

    def forward(self, clips: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(logits, embedding or None)."""
        if self.backend == "onnxruntime":
            out = self.session.run(None, {self.input_name: np.ascontiguousarray(clips, dtype=np.uint8)})
        else:
            out = self._torch_logits(clips)
        return out[0], (out[1] if self.embeddings else None)

    def _host_tensor(self, clips: np.ndarray):
        """uint8 clips as a host tensor: on CUDA actors a reused pinned buffer (one copy, async
        upload; the caller's .cpu() syncs before the next call refills it); on CPU, the clips."""
        import torch

        clips = np.ascontiguousarray(clips, dtype=np.uint8)
        if self.device.type != "cuda":
            return torch.from_numpy(clips if clips.flags.writeable else clips.copy())
        if self._pinned is None or len(self._pinned) < len(clips) or self._pinned.shape[1:] != clips.shape[1:]:
            self._pinned = torch.empty((max(len(clips), self.cfg.effective_batch_size), *clips.shape[1:]),
                                       dtype=torch.uint8, pin_memory=True)
        host = self._pinned[: len(clips)]
        host.numpy()[...] = clips
        return host

    def _torch_logits(self, clips: np.ndarray) -> list[np.ndarray]:
        import torch

        with torch.inference_mode():
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
