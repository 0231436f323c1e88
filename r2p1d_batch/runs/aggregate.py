"""Finishing videos from the writer stage's per-file clip sums, and the video-level top-k.
Pure: no disk, no threads, no clock.

A video's label is the top-k of (sum / n) of its clips' softmax, the mean clip softmax as before
(``video_topk``). Most videos have all their clips in one writer batch: the writer task finishes
those itself with ``video_topk`` (runs/clip_writer.py) and reports them whole. The rest, a video
crossing a part file boundary or longer than a batch, are finished here on the driver: per file
the report gives such a video's clip count, clip indices and float64 softmax sum, and the video
rows come in any report. A video is finished when its row and all its clips (the row's
``num_clips``) have arrived, in any order and over any number of files. Memory is bounded by the
videos in flight: a pending video holds one running sum (400 float64), its clip indices per file
and where its video row is; nothing is kept once it is finished.

A video whose decode failed keeps no clips: the decode stage holds a video's first clips until
its row is known (decoding/stage.py); a writer task leaves a failed whole video's clips out of
its file; for a video whose clips were written before its row came, the finished video names
the files to drop them from (``Finished.purge``), which commit does.

Resends. Ray hands a retried task's streaming outputs to the consumer once, by index, so the
driver sees each report once; a report delivered twice anyway (same file) is dropped before it
gets here (runs/writer.py). The per-run set of finished video ids that used to drop late resends
is gone (it grew with the run). What stays is bounded by the videos in flight: a clip index of a
video reported twice (by two files, or twice in one), more clips than its row says, a second
row for a pending video, or a video whole in one file with clips pending from another is a
``WriteConflict``, raised before anything is committed; a resend that arrives after its video
finished stays pending (or makes one video too many), and commit refuses that too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from ..classifying.scores import topk


class WriteConflict(RuntimeError):
    """Rows of one video delivered twice (a non-deterministic replay): not committing."""


@dataclass
class Finished:
    """Videos finished by one call, one entry per video in each list; ``means`` stacks the mean
    clip softmax of the videos that are ok with clips, in their order."""

    video_ids: list[str] = field(default_factory=list)
    rows: list[Any] = field(default_factory=list)  # where each video row is (the caller's token)
    ok: list[bool] = field(default_factory=list)
    clips: list[int] = field(default_factory=list)  # clips kept: n of an ok video, 0 on error
    means: list[np.ndarray] = field(default_factory=list)  # (k, classes) float64 blocks
    purge: dict[str, list[str]] = field(default_factory=dict)  # file -> failed videos with clips in it

    def extend(self, other: Finished) -> None:
        self.video_ids += other.video_ids
        self.rows += other.rows
        self.ok += other.ok
        self.clips += other.clips
        self.means += other.means
        for f, vids in other.purge.items():
            self.purge.setdefault(f, []).extend(vids)

    def __len__(self) -> int:
        return len(self.video_ids)


class _Pending:
    __slots__ = ("sum", "n", "files", "row", "expected", "ok")

    def __init__(self):
        self.sum: Optional[np.ndarray] = None
        self.n = 0
        self.files: list[tuple[str, np.ndarray]] = []
        self.row: Any = None
        self.expected: Optional[int] = None
        self.ok = False


@dataclass
class VideoClips:
    """One file's clips, per video: ``indices[offsets[i]:offsets[i + 1]]`` are video i's clip
    indices (ascending), ``sums[i]`` the float64 sum of their softmaxes."""

    file: str
    video_ids: list[str]
    offsets: np.ndarray  # (m + 1,)
    indices: np.ndarray
    sums: np.ndarray  # (m, classes) float64

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclass
class VideoRows:
    """Video rows: their ids, ``num_clips`` (clips their decode sent on), ok or not, and a token
    each that says where the row is (handed back in Finished.rows)."""

    video_ids: list[str]
    num_clips: np.ndarray
    ok: np.ndarray
    rows: list[Any]


class VideoAggregator:
    def __init__(self):
        self._pending: dict[str, _Pending] = {}

    @property
    def pending(self) -> list[str]:
        """Video ids with rows still waiting for the rest of their video."""
        return sorted(self._pending)

    def add(self, clips: Optional[VideoClips], videos: Optional[VideoRows]) -> Finished:
        """One report's clips of videos that were not whole in it (one file) and its video rows of
        such videos in; the videos they finished out."""
        done = Finished()
        if clips is not None:
            counts = clips.counts
            for i, vid in enumerate(clips.video_ids):
                st = self._pending.get(vid)
                if st is None:
                    st = self._pending[vid] = _Pending()
                st.files.append((clips.file, clips.indices[clips.offsets[i]:clips.offsets[i + 1]].copy()))
                st.sum = clips.sums[i].copy() if st.sum is None else st.sum + clips.sums[i]
                st.n += int(counts[i])
                self._maybe_finish(vid, st, done)
        if videos is not None:
            for j, vid in enumerate(videos.video_ids):
                st = self._pending.get(vid)
                if st is None:
                    st = self._pending[vid] = _Pending()
                elif st.row is not None:
                    raise WriteConflict(f"video {vid}: its video row arrived twice; not committing")
                st.row, st.expected, st.ok = videos.rows[j], int(videos.num_clips[j]), bool(videos.ok[j])
                self._maybe_finish(vid, st, done)
        return done

    def check_whole(self, video_ids: list[str]) -> None:
        """Videos a writer task finished whole (all their clips in its file) must have no clips
        or row here: that would be the same clips in two files."""
        hit = [v for v in video_ids if v in self._pending] if self._pending else []
        if hit:
            st = self._pending[hit[0]]
            raise WriteConflict(f"video {hit[0]}: whole in one part file and also reported by {_files(st)}; "
                                "not committing")

    def _maybe_finish(self, vid: str, st: _Pending, done: Finished) -> None:
        if st.expected is None:
            return
        if st.n > st.expected:
            raise WriteConflict(f"video {vid}: {st.n} clips reported by {_files(st)}, its row says "
                                f"{st.expected}; not committing")
        if st.n < st.expected:
            return
        if st.files:
            idx = np.concatenate([i for _, i in st.files])
            if len(np.unique(idx)) != len(idx):
                raise WriteConflict(f"video {vid}: clips reported twice by {_files(st)}; not committing")
        del self._pending[vid]
        done.video_ids.append(vid)
        done.rows.append(st.row)
        done.ok.append(st.ok)
        if st.ok:
            done.clips.append(st.n)
            if st.n:
                done.means.append((st.sum / st.n)[None, :])
        else:
            done.clips.append(0)
            for f, _ in st.files:
                done.purge.setdefault(f, []).append(vid)


def has_repeat(offsets: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Per video: does a clip index repeat inside its (ascending) segment of ``indices``."""
    m = len(offsets) - 1
    same = np.flatnonzero(indices[1:] == indices[:-1]) + 1  # positions equal to the one before
    out = np.zeros(m, bool)
    if len(same):
        seg = np.searchsorted(offsets, same, side="right") - 1
        inside = same > offsets[seg]  # not the first of its segment
        out[seg[inside]] = True
    return out


def _files(st: _Pending) -> str:
    return ", ".join(sorted({f for f, _ in st.files})) or "no file"


def video_topk(labels: np.ndarray, k: int, mean_probs: np.ndarray) -> dict[str, pa.Array]:
    """Video-level top-k of mean clip softmaxes (V, classes), as Arrow columns of V rows: label,
    score, topk_labels, topk_scores; the top-k of classifying.scores.topk (float32, ties to the lower id)."""
    if not len(mean_probs):
        ids, scores = np.empty((0, k), np.int64), np.empty((0, k), np.float32)
    else:
        ids, scores = topk(np.asarray(mean_probs, np.float64).astype(np.float32), k)
    v, k = ids.shape
    offsets = pa.array(np.arange(v + 1, dtype=np.int32) * k)
    return {
        "label": pa.array(labels[ids[:, 0]] if v else [], pa.string()),
        "score": pa.array(scores[:, 0] if v else [], pa.float32()),
        "topk_labels": pa.ListArray.from_arrays(offsets, pa.array(labels[ids].ravel(), pa.string())),
        "topk_scores": pa.ListArray.from_arrays(offsets, pa.array(scores.ravel(), pa.float32())),
    }
