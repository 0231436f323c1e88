"""Stage 3: classify, as a Ray actor-pool stage (N:N). A callable class: model set-up in
__init__, inference in __call__. Pixels stop here; scores go on; video rows pass through."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from . import schema
from .classify import ClipClassifier
from .config import Config
from .embeddings import embedding_array
from .preprocess import FrameTransform


class ClassifierActor:
    """Actor-pool stage: clips in (uint8), scores out; video rows pass through."""

    def __init__(self, cfg: Config):
        self.classifier = ClipClassifier(cfg.model, cfg.storage, embeddings=cfg.output.embeddings)
        self.labels = np.array(self.classifier.labels, dtype=object)
        crop = FrameTransform.from_preset().crop
        self.clip_shape = (cfg.sampling.clip_len, crop[0], crop[1], 3)

    def _score(self, clips: np.ndarray) -> dict[str, list]:
        s = self.classifier(clips)
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
            clips = clip_pixels(batch.column("frames"), self.clip_shape)
            if len(clips) != len(idx):
                raise ValueError(f"{len(idx)} clip rows but {len(clips)} clips of pixels in the batch")
            scores = self._score(clips)
            embedding = scores.pop("embedding")
            for name, values in scores.items():
                for i, v in zip(idx, values):
                    scored[name][i] = v
        scored["weights"] = [self.classifier.weights_id] * n
        scored["runtime"] = [self.classifier.runtime] * n
        out = batch.drop_columns(["frames"])
        for name, values in scored.items():
            field = schema.LABELED.field(name)
            out = out.append_column(field, pa.array(values, field.type))
        out = out.append_column(schema.LABELED.field("embedding"), embedding_array(embedding, n, idx))
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
