"""ONNX Runtime on CPU without torch: where the exported graphs are cached (per weights id,
torch version, opset and graph) and how a session opens. ``export.py`` writes the files."""
from __future__ import annotations

import hashlib
import os
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Optional

INPUT_NAME = "video"
OPSET = 17


def cpu_graph(embeddings: bool) -> str:
    """The graph CPU actors run: uint8 clips in, logits out (and the embedding with
    output.embeddings)."""
    return "uint8+embedding" if embeddings else "uint8"


def cache_dir() -> Path:
    return Path(os.environ.get("R2P1D_ONNX_CACHE") or Path(tempfile.gettempdir()) / "r2p1d_batch-onnx")


def cached_path(weights_id: str, *, graph: str, root: Optional[str | os.PathLike] = None) -> Path:
    """Where the export of ``weights_id`` lives (keyed by weights, torch version, opset, graph).
    The torch version comes from the installed package's metadata, so finding a cached export
    needs no torch import."""
    key = f"{weights_id}|torch={version('torch')}|opset={OPSET}|graph={graph}"
    return Path(root or cache_dir()) / f"r2plus1d_18-{hashlib.sha256(key.encode()).hexdigest()[:16]}.onnx"


def cpu_session(path: str | os.PathLike, threads: Optional[int] = None):
    """An ONNX Runtime session on the CPU provider; ``threads`` intra-op threads (None: ORT's
    default), operators run one at a time so the count is what the caller was given."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
