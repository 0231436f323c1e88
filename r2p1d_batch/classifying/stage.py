"""Stage 3: classify, as a Ray actor-pool stage (N:N). A callable class: model set-up started
in __init__, inference in __call__. Pixels stop here; scores go on; video rows pass through.

The model loads on a thread started by __init__ (torch import, weights, ONNX session: seconds,
tens of seconds on a loaded node), so the actor is ready at once and batches of video rows only
(error rows, the tail of a video) pass through without waiting for it; the first batch with
clips waits for the model. This module imports no torch: the actor's process starts light."""
from __future__ import annotations

import threading
import time

import numpy as np
import pyarrow as pa

from .. import schema
from ..config import Config, ModelConfig
from ..schema import embedding_array
from .weights import CROP


def planned_runtime(m: ModelConfig) -> str:
    """The runtime id ClipClassifier will report for ``m`` on an actor that has the GPUs its
    config asks for (``auto`` is CUDA exactly when the actor holds a GPU), without torch."""
    cuda = m.device == "cuda" or (m.device == "auto" and m.num_gpus > 0)
    backend = m.runtime if m.runtime != "auto" else ("torch" if cuda else "onnxruntime")
    if backend == "onnxruntime":
        return "onnxruntime-cpu-fp32"
    return f"torch-cuda-{m.amp}" if cuda else "torch-cpu-fp32"


class ClassifierActor:
    """Actor-pool stage: clips in (uint8), scores out; video rows pass through."""

    def __init__(self, cfg: Config, weights_id: str | None = None, runtime: str | None = None):
        self.cfg = cfg
        # What video rows record while the model loads: the driver's weights id (model.weights_id,
        # the id load_model records) and runtime (``runtime``: the driver's, for an int8 graph
        # whose id comes from its report; else planned here); the loaded model's once it is up.
        self.weights_id, self.runtime = weights_id, runtime or planned_runtime(cfg.model)
        self._error: BaseException | None = None
        self._loader = threading.Thread(target=self._load, name="load-model", daemon=True)
        self._loader.start()
        if weights_id is None:  # no id from the driver: the model's own, as before
            self._model()

    def _load(self) -> None:
        try:
            from .classifier import ClipClassifier

            self.classifier = ClipClassifier(self.cfg.model, self.cfg.storage, embeddings=self.cfg.output.embeddings,
                                             weights_id=self.weights_id)
            self.labels = np.array(self.classifier.labels, dtype=object)
            self.clip_shape = (self.cfg.sampling.clip_len, *CROP, 3)
        except BaseException as e:  # raised in the caller's thread by _model()
            self._error = e

    def _model(self):
        self._loader.join()
        if self._error is not None:
            raise self._error
        self.weights_id, self.runtime = self.classifier.weights_id, self.classifier.runtime
        return self.classifier

    def _score(self, clips: np.ndarray) -> dict[str, list]:
        s = self._model()(clips)
        return {
            "label": self.labels[s.topk_ids[:, 0]].tolist(),
            "label_id": s.topk_ids[:, 0].tolist(),
            "score": s.topk_scores[:, 0].tolist(),
            "topk_ids": s.topk_ids.tolist(),
            "topk_labels": [self.labels[ids].tolist() for ids in s.topk_ids],
            "topk_scores": s.topk_scores.tolist(),
            "probs": list(s.probs),
            "embedding": s.embedding,  # (N, 512) or None: one Arrow column in __call__
        }

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        idx = np.flatnonzero(batch.column("kind").to_numpy(zero_copy_only=False) == "clip")
        scored = {name: [None] * n for name in SCORE_COLUMNS}
        embedding = None
        if len(idx):
            self._model()
            clips = clip_pixels(batch.column("frames"), self.clip_shape)
            if len(clips) != len(idx):
                raise ValueError(f"{len(idx)} clip rows but {len(clips)} clips of pixels in the batch")
            scores = self._score(clips)
            embedding = scores.pop("embedding")
            for name, values in scores.items():
                for i, v in zip(idx, values):
                    scored[name][i] = v
        if not self._loader.is_alive() and self._error is None:
            self._model()  # loaded meanwhile: its own ids from now on
        scored["weights"] = [self.weights_id] * n
        scored["runtime"] = [self.runtime] * n
        out = batch.drop_columns(["frames"])
        for name, values in scored.items():
            field = schema.LABELED.field(name)
            out = out.append_column(field, pa.array(values, field.type))
        out = out.append_column(schema.LABELED.field("embedding"), embedding_array(embedding, n, idx))
        # When these clips were labeled: the run's clock (writer.ArrivalClock), taken here because
        # the driver now sees clips only once a writer task has written a whole part file of them.
        labeled_at = pa.array(np.full(n, time.time()), pa.float64())
        out = out.append_column(schema.LABELED.field("labeled_at"), labeled_at)
        return out.select(schema.LABELED.names)


SCORE_COLUMNS = tuple(name for name, _ in schema.CLIP_SCORES) + ("probs",)


def clip_pixels(frames: pa.ChunkedArray | pa.Array, clip_shape: tuple[int, ...]) -> np.ndarray:
    """The clip rows' pixels, in row order, as one uint8 (N, T, H, W, C) array. Video rows carry
    no bytes, so the binary column's data buffer holds exactly the clips back to back: a view of
    it, not a copy per clip (a batch spanning several blocks is concatenated once)."""
    arr = frames.combine_chunks() if isinstance(frames, pa.ChunkedArray) else frames
    if len(arr) == 0:
        return np.empty((0, *clip_shape), np.uint8)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + len(arr) + 1]
    lengths = np.diff(offsets)
    size = int(np.prod(clip_shape))
    bad = np.flatnonzero((lengths != 0) & (lengths != size))
    if len(bad):
        raise ValueError(f"row {int(bad[0])}: clip of {int(lengths[bad[0]])} bytes, expected {size} {clip_shape}")
    n = int(np.count_nonzero(lengths))
    return np.frombuffer(arr.buffers()[2], np.uint8, n * size, int(offsets[0])).reshape(n, *clip_shape)
