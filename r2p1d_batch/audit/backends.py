"""Where the audited model runs. Every backend has one method:

    run(clips_01: float32 (N, 3, 16, 112, 112) in [0, 1]) -> (logits (N, 400), report dict)

and runs the *device graph* (normalisation inside, input ``video``, output ``class_probs`` =
logits, as the model zoo exports it), never the host's uint8 path.

- ``onnxruntime``: that ONNX graph on this machine's CPU (no account needed).
- ``qai-hub``: that ONNX graph compiled for a phone on Qualcomm AI Hub (``hub.HubBackend``).
- ``replay``: outputs a device produced earlier: AI Hub's downloaded ``.h5``
  (``{name: [arrays]}``, in the order the clips were sent) or this audit's own
  ``device_outputs.npz`` (logits plus the clip keys, so the same clips are re-audited).
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, Protocol

import numpy as np

from ..config import AuditConfig
from .errors import AuditError

log = logging.getLogger("r2p1d_batch.audit")

INPUT_NAME, OUTPUT_NAME = "video", "class_probs"
BACKENDS = ("onnxruntime", "qai-hub", "replay")


class Backend(Protocol):
    name: str

    def run(self, clips_01: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]: ...


# -- the device graph ----------------------------------------------------------------------
def cache_dir(configured: Optional[str]) -> Path:
    base = configured or os.environ.get("R2P1D_CACHE") or Path.home() / ".cache" / "r2p1d_batch"
    return Path(base) / "onnx"


def device_graph(weights: str, seed: int, weights_id: str, directory: Path, storage=None) -> Path:
    """The device graph (ONNX) for these weights, exported once and cached by weights id."""
    from ..classifying.export import cached_export
    from ..classifying.model import load_model
    from ..classifying.ort import cached_path

    path = cached_path(weights_id, graph="device", root=directory)
    if path.is_file():
        return path
    loaded = load_model(weights, seed, storage)
    if loaded.weights_id != weights_id:
        raise AuditError(f"weights {weights!r} now load as {loaded.weights_id}, but the run used {weights_id}: "
                         f"the checkpoint changed since labeling")
    t0 = time.perf_counter()
    cached_export(loaded.module, weights_id, graph="device", root=directory)
    log.info("exported the device graph for %s to %s in %.1f s", weights_id, path, time.perf_counter() - t0)
    return path


# -- backends --------------------------------------------------------------------------------
class OnnxRuntimeBackend:
    """The device graph under ONNX Runtime on this machine's CPU."""

    name = "onnxruntime"

    def __init__(self, onnx_path: Path | str, batch_size: int = 8, threads: Optional[int] = None):
        import onnxruntime as ort

        from ..classifying.ort import cpu_session

        self.onnx_path, self.batch_size = Path(onnx_path), batch_size
        self.session = cpu_session(onnx_path, threads)
        self.version = ort.__version__

    def run(self, clips_01: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        clips = np.ascontiguousarray(clips_01, dtype=np.float32)
        t0, out = time.perf_counter(), []
        for a in range(0, len(clips), self.batch_size):
            out.append(self.session.run([OUTPUT_NAME], {INPUT_NAME: clips[a : a + self.batch_size]})[0])
        sec = time.perf_counter() - t0
        return np.concatenate(out).astype(np.float32), {
            "backend": self.name,
            "device": "host-cpu",
            "runtime": f"onnxruntime-{self.version}-cpu",
            "onnx": str(self.onnx_path),
            "ms_per_clip": round(1000 * sec / max(1, len(clips)), 2),
        }


def _read_h5(path: Path) -> dict[str, list[np.ndarray]]:
    import h5py
    from qai_hub.util.dataset_entries_converters import h5_to_dataset_entries

    with h5py.File(path, "r") as f:
        return dict(h5_to_dataset_entries(f))


class ReplayBackend:
    """Logits a device produced earlier, read from files (in the order given)."""

    name = "replay"

    def __init__(self, paths: list[str]):
        if not paths:
            raise AuditError("--backend replay needs --device-outputs FILE "
                             "(AI Hub's .h5 or an audit's device_outputs.npz)")
        chunks, self.keys, self.meta = [], None, {}
        for p in map(Path, paths):
            if not p.is_file():
                raise AuditError(f"device outputs file not found: {p}")
            try:
                chunks.append(self._load(p))
            except AuditError:
                raise
            except Exception as e:
                raise AuditError(f"{p}: cannot read device outputs ({type(e).__name__}: {e})") from None
        self.logits = np.concatenate(chunks).astype(np.float32)
        self.paths = [str(p) for p in paths]

    def _load(self, p: Path) -> np.ndarray:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                if OUTPUT_NAME not in z:
                    raise AuditError(f"{p}: no {OUTPUT_NAME!r} array (has {', '.join(z.files)})")
                if "clip_sha" in z:  # written by this audit: the clips it belongs to
                    keys = {k: z[k].tolist() for k in ("run_id", "video_id", "clip_index", "clip_sha") if k in z}
                    if self.keys is None:
                        self.keys = {k: [] for k in keys}
                    for k, v in keys.items():
                        self.keys.setdefault(k, []).extend(v)
                self.meta = {k: str(z[k]) for k in ("device", "runtime") if k in z} or self.meta
                return np.asarray(z[OUTPUT_NAME]).reshape(len(z[OUTPUT_NAME]), -1)
        if p.suffix in (".h5", ".hdf5"):
            entries = _read_h5(p)
            arrays = entries.get(OUTPUT_NAME)
            if arrays is None:
                if len(entries) != 1:
                    raise AuditError(f"{p}: no {OUTPUT_NAME!r} output (outputs: {', '.join(entries) or 'none'})")
                arrays = next(iter(entries.values()))
            return np.concatenate([np.asarray(a).reshape(len(a), -1) for a in arrays])
        raise AuditError(f"{p}: device outputs must be .h5 (AI Hub download) or .npz")

    def keep(self, positions: list[int]) -> None:
        """Keep the outputs of these sample positions (clips whose input was verified again)."""
        self.logits = self.logits[np.asarray(positions, dtype=np.int64)]

    def check(self, n: int) -> None:
        """Fail before the host reference is computed when the outputs cannot be these clips."""
        if len(self.logits) != n:
            raise AuditError(
                f"the device outputs hold {len(self.logits)} clips but {n} were verified for this "
                f"audit: rerun with the --sample and --seed the outputs were made with (or replay an "
                f"audit's device_outputs.npz, which names its clips)")

    def run(self, clips_01: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        self.check(len(clips_01))
        report = {"backend": self.name, "device": self.meta.get("device", "replayed"),
                  "runtime": self.meta.get("runtime", "replayed"), "device_outputs": self.paths}
        return self.logits, report


def make_backend(name: str, cfg: AuditConfig, graph: Callable[[], Path], batch_size: int = 8) -> Backend:
    """``graph()`` exports (or finds) the device graph; only backends that need it call it."""
    if name == "onnxruntime":
        return OnnxRuntimeBackend(graph(), batch_size=batch_size)
    if name == "replay":
        return ReplayBackend(list(cfg.device_outputs))
    if name == "qai-hub":
        from .hub import HubBackend  # the qai_hub client is only needed here

        return HubBackend(graph(), cfg.device, cfg.runtime, chunk_clips=cfg.chunk_clips, profile=cfg.profile)
    raise AuditError(f"unknown audit backend {name!r}; choose one of {', '.join(BACKENDS)}")
