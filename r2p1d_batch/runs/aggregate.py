"""Reassembly of labeled rows into finished videos, and the video-level top-k. Pure: no disk,
no threads, no clock.

Rows reach the driver in any order and a retried Ray task may deliver some twice. A video is
finished when its video row and all its clips have arrived; its clips are then released in
clip order together with the video row, whose top-k is that of the mean clip softmax. A video
whose decode failed half-way keeps no clips. Memory is bounded by the videos in flight: each
pending video holds its clip rows (no pixels) and one running sum of softmaxes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..classifying.classifier import topk


@dataclass
class FinishedVideo:
    video: dict  # the video row, with num_clips and the video-level label/score/top-k
    clips: list[dict]  # its clip rows in clip order ([] unless the video is ok)


@dataclass
class VideoAssembler:
    labels: np.ndarray  # class names, indexed by label id
    k: int
    duplicates_dropped: int = 0
    model_info: Optional[tuple[str, str]] = None  # (weights, runtime) of the first labeled row
    _clips: dict[str, dict[int, dict]] = field(default_factory=dict)
    _videos: dict[str, dict] = field(default_factory=dict)
    _prob_sums: dict[str, np.ndarray] = field(default_factory=dict)  # running sum of clip softmaxes
    _done: set[str] = field(default_factory=set)  # video ids already released

    @property
    def pending(self) -> list[str]:
        """Video ids with rows still waiting for the rest of their video."""
        return sorted(set(self._videos) | set(self._clips))

    def add(self, row: dict) -> tuple[Optional[FinishedVideo], bool]:
        """One labeled row in: (the video it finished, if any; whether it was a new clip)."""
        vid = row["video_id"]
        if vid in self._done:
            self.duplicates_dropped += 1
            return None, False
        if row["weights"] and self.model_info is None:
            self.model_info = (row["weights"], row["runtime"])
        new_clip = False
        if row["kind"] == "clip":
            pending = self._clips.setdefault(vid, {})
            probs = row.pop("probs")  # 400 floats: summed here, not kept per clip
            if row["clip_index"] not in pending:
                pending[row["clip_index"]] = row
                acc = self._prob_sums.get(vid)
                self._prob_sums[vid] = np.asarray(probs, np.float64) + (0.0 if acc is None else acc)
                new_clip = True
        else:
            self._videos[vid] = row
        return self._finish(vid), new_clip

    def _finish(self, vid: str) -> Optional[FinishedVideo]:
        video = self._videos.get(vid)
        clips = self._clips.get(vid, {})
        if video is None or len(clips) < (video["num_clips"] or 0):
            return None
        del self._videos[vid]
        self._clips.pop(vid, None)
        prob_sum = self._prob_sums.pop(vid, None)
        self._done.add(vid)
        ok = video["status"] == "ok"
        ordered = [clips[i] for i in sorted(clips)] if ok else []
        video = {**video, "num_clips": len(ordered)}
        if ordered:
            video.update(self.video_topk(prob_sum / len(ordered)))
        return FinishedVideo(video, ordered)

    def video_topk(self, mean_probs: np.ndarray) -> dict:
        ids, scores = topk(mean_probs.astype(np.float32)[None, :], self.k)
        return {"label": self.labels[ids[0, 0]], "score": float(scores[0, 0]),
                "topk_labels": self.labels[ids[0]].tolist(), "topk_scores": scores[0].tolist()}
