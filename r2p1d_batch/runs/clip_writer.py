"""Stage 4, on Ray workers: labeled rows in, one Parquet part file of their clips in the run's
staging, and a small report out: the only thing that reaches the driver.

The pipeline runs ``ClipWriter`` as a map_batches stage after the classifier (a task pool, a
quarter core per task, ``batch_rows`` rows per batch). Each call writes the batch's clip rows,
exactly the ``clips`` table's schema (run_id included), sorted by (video_id, clip_index), to
``clips/part-<run_id>-<uuid4>.parquet`` (in the Delta table's directory, invisible to every
reader until the run's commit adds it: runs/commit.py), and returns a report
(schema.WRITE_REPORT): per video in the file its clip count, clip indices and the float64 sum of
its clips' softmax; the batch's video rows without scores; the file's name and rows; and when
its clips were labeled. The driver finishes videos from that (runs/aggregate.py, runs/writer.py):
per-video work only, no Python object per clip, no softmax per clip.

Why a writer stage and not a Ray Data ``Datasink``: a Datasink's ``write()`` runs on the
workers too, but what it returns reaches the driver only in ``on_write_complete()``, once, after
the last block of the run. The driver could then finish no video before the end, and would hold
every video's row and softmax sum at once: memory by the run, not by the videos in flight. A
map_batches stage streams each report to the driver as soon as its file is written
(``ds.iter_batches``), and the commit stays the driver's, as before (runs/commit.py).

Exactly once: every call writes a new file under a fresh uuid. A retried attempt (its worker
killed, its node lost, a lost report recomputed by Ray) writes another file; the driver commits
exactly the files named in the reports it received, and deletes the run's other files.
Ray hands a streaming task's outputs to the consumer once by index, even across retries; a report
seen twice anyway is dropped by the driver (same file name).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import schema
from ..decoding.faults import test_hooks
from ..storage import bool_mask, filesystem
from .aggregate import has_repeat, video_topk
from .tables import DataFile, part_name, write_file

# Bytes of one labeled clip row reaching the writer, measured on LABELED rows (tests/
# test_writer_stage.py): the 400-float softmax (1.6 KB) and the 512-float embedding column
# (2 KB: a fixed-size list holds its floats even when null, so with embeddings off too).
ROW_BYTES = 4200
# A writer task holds one batch: at most Ray Data's default block size (128 MiB), so ~32k clips
# per batch, however large output.rows_per_file is; and at most 1/8 of the cluster's object store
# (a quarter of Ray Data's half of it), where the rows wait until a batch is full: 37 MiB, ~9k
# clips, on a laptop's 300 MiB store.
BATCH_BYTES = 128 * 2**20
OBJECT_STORE_SHARE = 1 / 8
SORT_KEYS = [("video_id", "ascending"), ("clip_index", "ascending")]  # a video's clips together, in order
# What a report's video row keeps of the video row the classifier passed on (the driver keeps
# the same columns until the video is finished: runs/writer.py).
REPORT_VIDEO_COLUMNS = ["video_id", "uri", *(n for n, _ in schema.VIDEO_SOURCE), "decode_sec", "weights", "runtime"]


def batch_rows(rows_per_file: int, object_store_bytes: float | None = None) -> int:
    """Rows per writer batch, so per part file: output.rows_per_file, capped so a batch stays
    within BATCH_BYTES (the writer task's memory) and OBJECT_STORE_SHARE of the object store."""
    cap = BATCH_BYTES if not object_store_bytes else min(BATCH_BYTES, object_store_bytes * OBJECT_STORE_SHARE)
    return max(1, min(rows_per_file, int(cap // ROW_BYTES)))


class ClipWriter:
    """map_batches fn: a LABELED batch in, its clips written as one part file, its report out.
    ``labels``: the class names (label id -> name), for the top-k of whole videos."""

    def __init__(self, clips_dir: str, storage=None, *, run_id: str, model: str, sampling: str,
                 created_at: datetime, labels: np.ndarray, topk_n: int):
        self.clips_dir, self.storage, self.run_id = clips_dir, storage, run_id
        self.model, self.sampling, self.created_at = model, sampling, created_at
        self.labels, self.topk_n = labels, topk_n

    def __call__(self, batch: pa.Table) -> pa.Table:
        name = part_name(self.run_id)
        is_clip = pc.equal(batch.column("kind"), "clip").to_numpy(zero_copy_only=False)
        clip_rows = np.flatnonzero(is_clip)  # row numbers, not a filtered copy of the batch's 4 KB rows
        videos = batch.take(np.flatnonzero(~is_clip))
        per = PerVideo.of(batch, clip_rows)
        whole = _whole(per, videos)
        keep = clip_rows[~np.isin(per.codes, whole.dropped_codes)] if len(whole.dropped_codes) else clip_rows
        written = None
        if len(keep):
            written = self._write(name, clip_table(batch, keep, self.model, self.sampling, self.created_at,
                                                   self.run_id))
            hooks = test_hooks()
            if hooks:  # a test's fault injection (R2P1D_TEST_HOOKS=1 only): die before reporting
                hooks.writer_exit(batch.column("uri").take(keep).to_pylist())
        rest = [_video_rows(name, videos, per, whole, self.labels, self.topk_n), _partial_clips(name, per, whole)]
        n = 1 + sum(t.num_rows for t in rest)
        return pa.concat_tables([_file_row(name, batch, clip_rows, written, n), *rest])

    def _write(self, name: str, table: pa.Table) -> DataFile:
        fs, root = filesystem(self.clips_dir, self.storage)
        fs.makedirs(root, exist_ok=True)
        return write_file(fs, root, name, table)


def clip_table(batch: pa.Table, rows: np.ndarray, model: str, sampling: str, created_at: datetime,
               run_id: str) -> pa.Table:
    """The LABELED batch's clip ``rows`` -> `clips` table rows (schema.CLIPS_TABLE), sorted by
    video and clip index: one take of the batch."""
    keys = pa.table({k: batch.column(k).take(rows) for k, _ in SORT_KEYS})
    rows = rows[pc.sort_indices(keys, sort_keys=SORT_KEYS).to_numpy()]
    n = len(rows)
    constant = {
        "model": pa.repeat(pa.scalar(model, pa.string()), n),
        "sampling": pa.repeat(pa.scalar(sampling, pa.string()), n),
        "created_at": pa.repeat(pa.scalar(created_at, schema.CLIPS.field("created_at").type), n),
        "run_id": pa.repeat(pa.scalar(run_id, pa.string()), n),
    }
    taken = batch.select([f.name for f in schema.CLIPS if f.name not in constant]).take(rows)
    columns = [constant[f.name] if f.name in constant else taken.column(f.name).cast(f.type)
               for f in schema.CLIPS_TABLE]
    return pa.Table.from_arrays(columns, schema=schema.CLIPS_TABLE)


@dataclass
class PerVideo:
    """A batch's clips per video, as arrays over the m videos (codes 0..m-1, in order of first
    appearance): ids, clip counts, clip indices (ascending; video j's are
    ``indices[offsets[j]:offsets[j + 1]]``), whether one repeats, and the float64 softmax sums."""

    ids: pa.Array
    codes: np.ndarray  # per clip row: its video's code
    counts: np.ndarray
    offsets: np.ndarray
    indices: np.ndarray
    repeats: np.ndarray
    sums: np.ndarray  # (m, classes) float64

    @classmethod
    def of(cls, batch: pa.Table, clip_rows: np.ndarray) -> PerVideo:
        """The batch's clip rows ``clip_rows``, vectorised: the sums are taken over runs of one
        video's rows (a decode block keeps a video's clips together), then over each video's runs."""
        ids = batch.column("video_id").take(clip_rows).combine_chunks().dictionary_encode()
        codes = ids.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        m = len(ids.dictionary)
        probs = _probs_matrix(batch.column("probs"), clip_rows)
        counts = np.bincount(codes, minlength=m)
        sums = np.zeros((m, probs.shape[1]))
        if len(codes):
            runs = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
            run_sums = np.add.reduceat(probs, runs, axis=0, dtype=np.float64)
            run_codes = codes[runs]
            order = np.argsort(run_codes, kind="stable")
            first = np.flatnonzero(np.r_[True, np.diff(run_codes[order]) != 0])
            sums = np.add.reduceat(run_sums[order], first, axis=0)  # row j: code j (every code occurs)
        clip_index = batch.column("clip_index").take(clip_rows).to_numpy(zero_copy_only=False)
        indices = clip_index[np.lexsort((clip_index, codes))].astype(np.int32)  # by code, then clip index
        offsets = np.r_[0, np.cumsum(counts)].astype(np.int32)
        return cls(ids.dictionary, codes, counts, offsets, indices, has_repeat(offsets, indices), sums)


@dataclass
class Whole:
    """Which of a batch's video rows are whole (all their clips in the batch, once each)."""

    rows: np.ndarray  # per video row: whole or not
    codes: np.ndarray  # per video row: its code in PerVideo, -1 without clips here
    ok: np.ndarray  # per video row: status ok
    dropped_codes: np.ndarray  # codes of whole videos that failed: their clips stay out of the file


def _whole(per: PerVideo, videos: pa.Table) -> Whole:
    n = videos.num_rows
    codes = pc.index_in(videos.column("video_id"), value_set=per.ids).fill_null(-1).to_numpy(zero_copy_only=False)
    expected = videos.column("num_clips").fill_null(0).to_numpy(zero_copy_only=False)
    here = codes >= 0
    whole = np.where(here, False, expected == 0)
    c = codes[here]
    whole[here] = (per.counts[c] == expected[here]) & ~per.repeats[c]
    if pc.count_distinct(videos.column("video_id"), mode="all").as_py() < n:
        whole[:] = False  # a video row twice in one batch: none is whole, the driver names it
    ok = bool_mask(pc.equal(videos.column("status"), "ok"))
    return Whole(whole, codes, ok, codes[whole & here & ~ok])


def _file_row(name: str, batch: pa.Table, clip_rows: np.ndarray, written: DataFile | None,
              report_rows: int) -> pa.Table:
    labeled_at = batch.column("labeled_at").to_numpy()[clip_rows]
    times, counts = np.unique(labeled_at, return_counts=True)
    first = {k: batch.column(k)[int(clip_rows[0])].as_py() for k in ("weights", "runtime")} if len(clip_rows) else {}
    return _rows(1, kind="file", file=name, rows=[written.rows if written else 0], report_rows=[report_rows],
                 bytes=[written.size if written else 0], stats=[written.stats if written else None],
                 weights=[first.get("weights")],
                 runtime=[first.get("runtime")], labeled_at=[times.tolist()], labeled_clips=[counts.tolist()])


def _video_rows(name: str, videos: pa.Table, per: PerVideo, whole: Whole, labels: np.ndarray, k: int) -> pa.Table:
    """The batch's video rows; a whole ok video with its video-level top-k (aggregate.video_topk
    of sum / n, as the driver computes it for the others)."""
    n = videos.num_rows
    scored = whole.rows & whole.ok & (whole.codes >= 0)
    c = whole.codes[scored]
    top = video_topk(labels, k, per.sums[c] / per.counts[c][:, None])
    at = pa.array(np.cumsum(scored) - 1, pa.int64(), mask=~scored)
    passed = {name: videos.column(name) for name in REPORT_VIDEO_COLUMNS}
    return _rows(n, kind="video", file=name, whole=whole.rows, **passed,
                 **{col: values.take(at) for col, values in top.items()})


def _partial_clips(name: str, per: PerVideo, whole: Whole) -> pa.Table:
    """One row per video in the file that is not whole here: clip count, indices, float64 sum."""
    done = np.zeros(len(per.counts), bool)
    done[whole.codes[whole.rows & (whole.codes >= 0)]] = True
    part = np.flatnonzero(~done)
    if not len(part):
        return _rows(0)
    starts, ends = per.offsets[part], per.offsets[part + 1]
    take = np.concatenate([np.arange(a, b) for a, b in zip(starts, ends)]) if len(part) < len(done) else None
    indices = per.indices if take is None else per.indices[take]
    offsets = np.r_[0, np.cumsum(per.counts[part])].astype(np.int32)
    n_classes = per.sums.shape[1]
    return _rows(
        len(part), kind="clips", file=name, rows=per.counts[part], video_id=per.ids.take(pa.array(part)),
        clip_indices=pa.ListArray.from_arrays(pa.array(offsets), pa.array(indices, pa.int32())),
        prob_sum=pa.ListArray.from_arrays(pa.array(np.arange(len(part) + 1, dtype=np.int32) * n_classes),
                                          pa.array(per.sums[part].ravel())),
    )


def _probs_matrix(probs: pa.ChunkedArray, clip_rows: np.ndarray) -> np.ndarray:
    """The clip rows' softmaxes as one float32 (N, classes) array. The classifier leaves other
    rows' lists null and empty, so the list values are the clips' softmaxes in row order: no
    copy of them where the column is one chunk."""
    arr = probs.combine_chunks() if probs.num_chunks != 1 else probs.chunk(0)
    offsets = arr.offsets.to_numpy()
    lengths = np.diff(offsets)
    classes = int(lengths[clip_rows[0]]) if len(clip_rows) else 0
    if (lengths[clip_rows] != classes).any():
        raise ValueError(f"probs of {sorted(set(lengths[clip_rows].tolist()))} classes in one batch")
    if lengths.sum() == classes * len(clip_rows):
        values = arr.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0])).to_numpy()
    else:  # other rows hold values too
        values = pc.list_flatten(arr.take(pa.array(clip_rows))).to_numpy()
    return values.reshape(len(clip_rows), classes)


def _rows(n: int, **columns) -> pa.Table:
    """``n`` report rows with the given columns (a scalar is repeated), nulls elsewhere."""
    out = []
    for f in schema.WRITE_REPORT:
        v = columns.get(f.name)
        if v is None:
            out.append(pa.nulls(n, f.type))
        elif isinstance(v, str):
            out.append(pa.repeat(pa.scalar(v, f.type), n))
        elif isinstance(v, (pa.Array, pa.ChunkedArray)):
            out.append(v.cast(f.type) if v.type != f.type else v)
        else:
            out.append(pa.array(v, f.type))
    return pa.Table.from_arrays(out, schema=schema.WRITE_REPORT)
