"""The write path's cost per clip: on the driver (the figure that caps a fleet) and in the
writer stage on the workers.

Synthetic labeled batches, as the classifier stage emits them (400-class softmax, top-5, an
embedding column; videos of a fixed number of clips whose 8-clip decode blocks interleave from
``STREAMS`` decode tasks, each video's row right after its last clip), are cut into writer batches
of ``runs.clip_writer.batch_rows`` rows and run through the real ``ClipWriter`` (its part files
land in the run's staging, as on a cluster); that is the workers' cost. Then the reports go
through the exact driver code the pipeline runs (``RunWriter.add`` per report, its flushes of
`videos`, ``commit``: publish and record), timed with ``time.process_time`` (every thread of
the process). No Ray: what Ray's delivery costs the driver is not in these figures.
"""
from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from .. import schema
from ..classifying.weights import categories
from ..runs.clip_writer import batch_rows
from ..runs.writer import RunWriter

STREAMS = 4  # decode tasks whose 8-clip blocks interleave at the classifier
BLOCK = 8


def _video_order(n_videos: int, clips_per_video: int) -> list[tuple[int, int]]:
    """(video, clip index or -1 for its video row), in the order the classifier emits them:
    each decode stream's rows cut into blocks of BLOCK clips (video rows ride along), the streams'
    blocks taken in turn."""
    blocks = []
    for s in range(STREAMS):
        stream_blocks, block, n = [], [], 0
        for v in range(s, n_videos, STREAMS):
            for i in [*range(clips_per_video), -1]:
                block.append((v, i))
                n += i >= 0
                if n == BLOCK:
                    stream_blocks.append(block)
                    block, n = [], 0
        if block:
            stream_blocks.append(block)
        blocks.append(stream_blocks)
    out = []
    for k in range(max(len(b) for b in blocks)):
        for b in blocks:
            if k < len(b):
                out += b[k]
    return out


def _masked(values, typ, clip: np.ndarray) -> pa.Array:
    return pa.array(values, typ, mask=~clip)


def _lists(flat: np.ndarray, width: int, typ, clip: np.ndarray) -> pa.Array:
    """Rows of ``width`` values each (``flat``'s rows of the clips), null and empty where not a
    clip, as the classifier builds them."""
    offsets = pa.array(np.r_[0, np.cumsum(clip * width)].astype(np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(flat[clip].ravel()), mask=pa.array(~clip)).cast(typ)


def labeled_batches(n_videos: int, clips_per_video: int, rows: int, embeddings: bool,
                    seed: int = 0) -> Iterator[pa.Table]:
    """LABELED tables of ``rows`` rows (the last shorter) for ``n_videos`` videos."""
    rng = np.random.default_rng(seed)
    names = np.array(categories(), dtype=object)
    order = _video_order(n_videos, clips_per_video)
    for start in range(0, len(order), rows):
        part = order[start:start + rows]
        n = len(part)
        vid = np.array([v for v, _ in part])
        idx = np.array([i for _, i in part])
        clip = idx >= 0
        probs = rng.random((n, len(names)), dtype=np.float32) ** 8  # peaked, like a softmax
        probs /= probs.sum(1, keepdims=True)
        top = np.argsort(-probs, axis=1)[:, :5].astype(np.int16)
        ids = np.char.add("v", vid.astype(str)).astype(object)
        emb = rng.standard_normal((int(clip.sum()), schema.EMBEDDING_DIM)).astype(np.float32) if embeddings else None

        cols = {f.name: pa.nulls(n, f.type) for f in schema.LABELED}
        cols.update(
            kind=pa.array(np.where(clip, "clip", "video")), video_id=pa.array(ids, pa.string()),
            uri=pa.array(np.char.add("s3://bucket/videos/", ids.astype(str) + ".mp4"), pa.string()),
            clip_index=_masked(np.maximum(idx, 0), pa.int32(), clip), start_sec=_masked(idx * 1.0, pa.float64(), clip),
            end_sec=_masked(idx + 1.07, pa.float64(), clip),
            frame_pts=_lists(np.tile(np.arange(16, dtype=np.int64) * 512, (n, 1)), 16, pa.list_(pa.int64()), clip),
            padded_frames=_masked(np.zeros(n), pa.int16(), clip),
            clip_sha=_masked(np.char.add("sha256-", np.arange(start, start + n).astype(str)), pa.string(), clip),
            label=_masked(names[top[:, 0]], pa.string(), clip), label_id=_masked(top[:, 0], pa.int16(), clip),
            score=_masked(np.take_along_axis(probs, top[:, :1].astype(np.int64), 1)[:, 0], pa.float32(), clip),
            topk_ids=_lists(top, 5, pa.list_(pa.int16()), clip), topk_labels=_lists(names[top], 5, schema.TOPK, clip),
            topk_scores=_lists(np.take_along_axis(probs, top.astype(np.int64), 1), 5, pa.list_(pa.float32()), clip),
            probs=_lists(probs, len(names), pa.list_(pa.float32()), clip),
            weights=pa.array(["random:seed=0"] * n), runtime=pa.array(["torch-cuda-bf16"] * n),
            embedding=schema.embedding_array(emb, n, np.flatnonzero(clip)),
            labeled_at=pa.array(1e9 + np.arange(start, start + n) // 64 * 0.04),  # a GPU batch of 64
        )
        video = ~clip
        cols.update(status=pa.array(np.where(video, "ok", None), pa.string()),
                    error_class=pa.array(np.where(video, "", None), pa.string()),
                    error=pa.array(np.where(video, "", None), pa.string()),
                    num_clips=pa.array(np.where(video, clips_per_video, 0), pa.int32(), mask=clip),
                    decoder=pa.array(np.where(video, "cpu", None), pa.string()),
                    source_fingerprint=pa.array(np.where(video, "etag", None), pa.string()),
                    decode_sec=pa.array(np.where(video, 1.5, 0.0), pa.float64(), mask=clip))
        yield pa.table(cols, schema=schema.LABELED)


def write_path(clips: int, clips_per_video: int, embeddings: bool, extras: bool = False) -> dict:
    """One measurement: ``clips`` clips over clips // clips_per_video videos."""
    n_videos = max(1, clips // clips_per_video)
    rows = batch_rows(200_000)  # the default output.rows_per_file, capped by bytes
    ids = [f"v{i}" for i in range(n_videos)]
    todo = {"video_id": ids, "uri": [f"s3://bucket/videos/{v}.mp4" for v in ids],
            "start_sec": pa.nulls(n_videos, pa.float64()), "end_sec": pa.nulls(n_videos, pa.float64())}
    if extras:
        todo["source"] = [f"collection-{i % 7}" for i in range(n_videos)]
    with tempfile.TemporaryDirectory(prefix="r2p1d-bench-driver-") as tmp:
        w = RunWriter(str(Path(tmp) / "out"), "20260101T000000Z-bench0", pa.table(todo), sampling="dense",
                      topk_n=5)
        stage = w.clip_writer()
        reports, worker_s, total = [], 0.0, 0
        for batch in labeled_batches(n_videos, clips_per_video, rows, embeddings):
            t = time.process_time()
            reports.append(stage(batch))
            worker_s += time.process_time() - t
            total += batch.num_rows
        most_pending = 0
        t = time.process_time()
        for r in reports:
            w.add(r)
            most_pending = max(most_pending, len(w.aggregator.pending))
        add_s = time.process_time() - t
        s = w.commit(1.0)
        driver_s = time.process_time() - t
    n_clips = n_videos * clips_per_video
    assert s.clips == n_clips and s.videos == n_videos
    return {
        "clips": n_clips, "clips_per_video": clips_per_video, "embeddings": embeddings, "extras": extras,
        "part_files": len(reports), "rows_per_file": rows,
        "driver_us_per_clip": driver_s / n_clips * 1e6, "driver_add_us_per_clip": add_s / n_clips * 1e6,
        "driver_commit_s": driver_s - add_s, "driver_clips_per_s": n_clips / driver_s,
        "most_pending_videos": most_pending,
        "worker_us_per_clip": worker_s / n_clips * 1e6,
    }


def driver_rows(clips: int = 200_000, clips_per_video=(1, 5, 20), repeats: int = 2,
                extras: bool = True) -> tuple[list[dict], list[str]]:
    """The write path's cost per clip with embeddings off and on, per clips-per-video; best of
    ``repeats`` (the figures are CPU time, so the best is the least disturbed by a busy machine)."""
    out = []
    cases = [(cpv, emb, False) for emb in (False, True) for cpv in clips_per_video]
    if extras:  # with the most videos per clip: the extras are joined per video
        cases.append((clips_per_video[0], False, True))
    for cpv, emb, ext in cases:
        runs = [write_path(clips, cpv, emb, ext) for _ in range(repeats)]
        out.append(min(runs, key=lambda r: r["driver_us_per_clip"]))
    notes = [
        f"synthetic LABELED batches ({STREAMS} decode streams of {BLOCK}-clip blocks interleaved, 400 classes, "
        "top-5, embedding column) through runs.clip_writer.ClipWriter (worker side) and the pipeline's driver "
        "code: RunWriter.add per report, its videos flushes, commit (publish + record); time.process_time; no Ray",
        "driver_us_per_clip: add + commit; most_pending_videos: the most videos the driver held at once "
        "(videos crossing a part file); extras: one manifest pass-through column, joined per flush from "
        "the todo table (O(todo rows) per flush, until the extras come with the video rows)",
        f"best of {repeats} runs each",
    ]
    return out, notes
