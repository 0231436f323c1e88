"""Stage 5, on the driver: the writer stage's reports in, the run's `videos` rows, summary and
commit out.

The workers write the clips (clip_writer.py); what reaches the driver is one small report per
part file: the file's name, rows and clock; the batch's video rows, those whole in the file
already labeled (video-level top-k) by the writer task; for the other videos, per video their
clip count, clip indices and float64 softmax sum. Here the whole videos' rows go straight to the
`videos` part files (Arrow, a flush per ``flush_rows`` videos), aggregate.VideoAggregator
finishes the others, this module keeps the run's summary and clock, and commit.StagedRun
publishes exactly the reported files at commit. The work is per report and per video, in
arrays: no Python object per clip, and memory bounded by the videos in flight (plus the list of
part files, one per ~32k clips, which the run record lists anyway).
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import schema
from ..classifying.weights import MODEL_NAME, categories, is_random
from ..storage import bool_mask
from .aggregate import Finished, VideoAggregator, VideoClips, VideoRows, video_topk
from .clip_writer import REPORT_VIDEO_COLUMNS, ClipWriter
from .commit import StagedRun
from .summary import RunSummary
from .tables import DataFile

MANIFEST_KEYS = ("video_id", "uri", "start_sec", "end_sec")  # manifest columns that are not extras
VIDEO_LABEL_COLUMNS = ["label", "score", "topk_labels", "topk_scores"]
EXTRAS_JOINS = 64


class ArrivalClock:
    """Clips labeled over time, for first_clip_sec and steady_clips_per_sec: the classifier's
    (labeled_at, clips) pairs, as the reports bring them (epoch seconds). Constant memory: the
    earliest batch (and its clips), the latest time, the total."""

    def __init__(self, started: float):
        self.started = started  # the run's start, epoch seconds
        self.first: Optional[float] = None
        self.last = 0.0
        self.first_batch = self.total = 0

    def labeled(self, t: float, n: int) -> None:
        if self.first is None or t < self.first:
            self.first, self.first_batch = t, n
        elif t == self.first:  # the same classifier batch, split over two files
            self.first_batch += n
        self.last, self.total = max(self.last, t), self.total + n

    def fill(self, s: RunSummary) -> None:
        if self.first is None:
            return
        s.first_clip_sec = round(self.first - self.started, 3)
        span = self.last - self.first
        if span > 0:
            s.steady_clips_per_sec = round((self.total - self.first_batch) / span, 3)


class RunWriter:
    """The driver's side of one run. ``todo``: the rows this run labels (Arrow; its columns
    beyond the manifest keys are the extras passed through to `videos`)."""

    def __init__(self, output: str, run_id: str, todo: pa.Table, *, sampling: str, topk_n: int,
                 rows_per_file: int = 200_000, storage=None, flush_rows: int = 2000,
                 config: Optional[dict] = None, started: Optional[float] = None):
        self.run_id, self.sampling, self.topk_n, self.storage = run_id, sampling, topk_n, storage
        extras = [f for f in todo.schema if f.name not in MANIFEST_KEYS]
        self.videos_schema = pa.schema(list(schema.VIDEOS) + extras)
        # Until the extras reach the driver through the reports (with the video rows), they are
        # joined onto each flush from the todo table: Arrow, no Python object per manifest row.
        self._extras = todo.select(["video_id"] + [f.name for f in extras]) if extras else None
        self.expected = todo.num_rows  # every row handed to Ray ends as exactly one video row
        # The join scans the rows to label (0.17 s at 10M rows, measured): with extras, flush at
        # most ~EXTRAS_JOINS times a run; the rows waiting are small next to the todo table.
        self.flush_rows = max(flush_rows, todo.num_rows // EXTRAS_JOINS) if extras else flush_rows
        self.staged = StagedRun(output, run_id, self.videos_schema, rows_per_file=rows_per_file, storage=storage)
        self.created_at = datetime.now(timezone.utc)
        self.labels = np.array(categories(), dtype=object)
        self.aggregator = VideoAggregator()
        self.summary = RunSummary(run_id=run_id, output=output, sampling=sampling, config=config or {})
        self.clock = ArrivalClock(time.time() if started is None else started)
        self.model_info: Optional[tuple[str, str]] = None  # (weights, runtime) of the first labeled clips
        self.duplicates_dropped = 0  # reports delivered a second time (same file), dropped whole
        self._files: dict[str, Optional[DataFile]] = {}  # clip part files reported: name -> file (None: no rows)
        self._purge: dict[str, set[str]] = {}  # file -> failed videos whose clips it holds
        self._parts: dict[int, pa.Table] = {}  # reports' video rows, while some are not flushed
        self._unflushed: dict[int, int] = {}  # part -> its rows not flushed yet
        self._next_part = 0
        self._done = Finished()  # videos finished here, not flushed yet
        self._ready: list[pa.Table] = []  # rows of videos finished whole by a writer task, not flushed yet
        self._incoming: dict[str, list[pa.Table]] = {}  # reports cut over blocks, until all rows are here
        self._unflushed_rows = 0

    def clip_writer(self) -> ClipWriter:
        """The writer stage's function for this run (runs on the workers)."""
        return ClipWriter(self.staged.clips_url, self.storage, run_id=self.run_id, model=MODEL_NAME,
                          sampling=self.sampling, created_at=self.created_at, labels=self.labels, topk_n=self.topk_n)

    # -- streaming in ---------------------------------------------------------------------
    def add(self, block: pa.Table) -> None:
        """Writer-stage output in (schema.WRITE_REPORT): one or more reports, or part of one (Ray
        Data cuts an output past 1.5x its block size in two): a report is taken once all of its
        rows, which its file row counts, are here. A report seen before is dropped whole."""
        names = pc.unique(block.column("file")).to_pylist()
        for name in names:
            part = block if len(names) == 1 else block.filter(pc.equal(block.column("file"), name))
            if name in self._files:  # delivered before
                self.duplicates_dropped += 1
                continue
            parts = self._incoming.setdefault(name, [])
            parts.append(part)
            report = pa.concat_tables(parts) if len(parts) > 1 else part
            head = report.filter(pc.equal(report.column("kind"), "file"))
            if not head.num_rows or report.num_rows < head.column("report_rows")[0].as_py():
                continue  # the rest comes in a later block
            del self._incoming[name]
            self._report(name, head, report)
        if self._unflushed_rows >= self.flush_rows:
            self._flush()

    def _report(self, name: str, head: pa.Table, report: pa.Table) -> None:
        self._file_rows(head)
        kind = report.column("kind")
        videos = report.filter(pc.equal(kind, "video"))
        whole = videos.column("whole").fill_null(False)
        self._whole(videos.filter(whole))
        videos = videos.filter(pc.invert(whole))
        clips = report.filter(pc.equal(kind, "clips"))
        if clips.num_rows or videos.num_rows:
            self._finished(self.aggregator.add(self._clips(name, clips), self._videos(videos)))

    def _file_rows(self, files: pa.Table) -> None:
        for f in files.select(["file", "rows", "bytes", "stats", "weights", "runtime", "labeled_at",
                               "labeled_clips"]).to_pylist():
            self._files[f["file"]] = DataFile(f["file"], f["bytes"], f["rows"], f["stats"]) if f["rows"] else None
            if f["weights"] and self.model_info is None:
                self.model_info = (f["weights"], f["runtime"])
            for t, n in zip(f["labeled_at"] or [], f["labeled_clips"] or []):
                self.clock.labeled(t, n)

    def _whole(self, v: pa.Table) -> None:
        """Video rows a writer task finished (all their clips in its file): ready as they are."""
        if not v.num_rows:
            return
        self.aggregator.check_whole(v.column("video_id").to_pylist())
        ok = pc.equal(v.column("status"), "ok")
        kept = pc.if_else(ok, v.column("num_clips"), pa.scalar(0, pa.int32()))  # a failed video keeps no clips
        ready = v.select(REPORT_VIDEO_COLUMNS + VIDEO_LABEL_COLUMNS)
        ready = ready.set_column(ready.schema.get_field_index("num_clips"), "num_clips", kept)
        self._ready.append(ready)
        self._unflushed_rows += v.num_rows
        self.summary.videos += v.num_rows
        self.summary.clips += pc.sum(kept).as_py() or 0
        if self.model_info is None:
            self._model_info_from(v)

    @staticmethod
    def _clips(name: str, c: pa.Table) -> Optional[VideoClips]:
        if not c.num_rows:
            return None
        indices = c.column("clip_indices").combine_chunks()
        sums = c.column("prob_sum").combine_chunks()
        offsets = indices.offsets.to_numpy()
        return VideoClips(
            file=name, video_ids=c.column("video_id").to_pylist(),
            offsets=offsets - offsets[0], indices=indices.flatten().to_numpy(),
            sums=sums.flatten().to_numpy().reshape(c.num_rows, -1),
        )

    def _videos(self, v: pa.Table) -> Optional[VideoRows]:
        if not v.num_rows:
            return None
        part = self._next_part
        self._next_part += 1
        self._parts[part] = v.select(REPORT_VIDEO_COLUMNS)
        self._unflushed[part] = v.num_rows
        if self.model_info is None:
            self._model_info_from(v)
        return VideoRows(
            video_ids=v.column("video_id").to_pylist(),
            num_clips=v.column("num_clips").fill_null(0).to_numpy(),
            ok=bool_mask(pc.equal(v.column("status"), "ok")),
            rows=[(part, i) for i in range(v.num_rows)],
        )

    def _model_info_from(self, v: pa.Table) -> None:
        w = [x for x in v.column("weights").to_pylist() if x]
        if w:
            self.model_info = (w[0], v.column("runtime")[0].as_py())

    def _finished(self, f: Finished) -> None:
        if not len(f):
            return
        self._done.extend(f)
        self._unflushed_rows += len(f)
        for file, vids in f.purge.items():
            self._purge.setdefault(file, set()).update(vids)
        s = self.summary
        s.videos += len(f)
        s.clips += sum(f.clips)

    def _flush(self) -> None:
        ready, self._ready = self._ready, []
        if len(self._done):
            ready.append(self._finished_rows(self._done))
            self._done = Finished()
        self._unflushed_rows = 0
        if not ready:
            return
        rows = pa.concat_tables(ready)
        s = self.summary
        ok = pc.equal(rows.column("status"), "ok")
        n_ok = pc.sum(ok).as_py() or 0
        s.videos_ok += n_ok
        s.videos_error += rows.num_rows - n_ok
        decoder = pc.if_else(pc.equal(rows.column("decoder"), ""), None, rows.column("decoder")).fill_null("cpu")
        for d, n in _counts(decoder.filter(ok)).items():
            s.videos_by_decoder[d] = s.videos_by_decoder.get(d, 0) + n
        for e, n in _counts(rows.column("error_class").filter(pc.invert(ok))).items():
            s.errors_by_class[e] = s.errors_by_class.get(e, 0) + n
        videos = self._videos_table(rows)
        run_id = pa.repeat(pa.scalar(self.run_id), videos.num_rows)
        self.staged.videos.write(videos.append_column(schema.RUN_ID, run_id))

    def _finished_rows(self, done: Finished) -> pa.Table:
        """Videos finished here (not whole in one file): their report rows with the final clip
        count and the video-level top-k, in ``done``'s order."""
        uses = Counter(p for p, _ in done.rows)
        base, offset = {}, 0
        for part in uses:
            base[part], offset = offset, offset + self._parts[part].num_rows
        rows = pa.concat_tables([self._parts[p] for p in uses]).take([base[p] + i for p, i in done.rows])
        for part, n_used in uses.items():  # a report's video rows are dropped once all are out
            self._unflushed[part] -= n_used
            if not self._unflushed[part]:
                del self._parts[part], self._unflushed[part]
        clips = np.array(done.clips, np.int64)
        labeled = np.array(done.ok, bool) & (clips > 0)  # the rows of done.means, in order
        top = video_topk(self.labels, self.topk_n,
                         np.concatenate(done.means) if done.means else np.empty((0, len(self.labels))))
        at = pa.array(np.cumsum(labeled) - 1, pa.int64(), mask=~labeled)  # row r's entry in top, or null
        rows = rows.set_column(rows.schema.get_field_index("num_clips"), "num_clips", pa.array(clips, pa.int32()))
        for name in VIDEO_LABEL_COLUMNS:
            rows = rows.append_column(name, top[name].take(at))
        return rows

    def _videos_table(self, rows: pa.Table) -> pa.Table:
        """Finished videos' rows -> `videos` rows (schema.VIDEOS + extras)."""
        n = rows.num_rows
        weights, runtime = self.model_info or ("", "")
        cols = {
            "model": pa.repeat(pa.scalar(MODEL_NAME), n), "sampling": pa.repeat(pa.scalar(self.sampling), n),
            "created_at": pa.repeat(pa.scalar(self.created_at, schema.VIDEOS.field("created_at").type), n),
            # the video row's own model ids (the classifier's), else the run's, as before
            "weights": _or(rows.column("weights"), weights), "runtime": _or(rows.column("runtime"), runtime),
        }
        out = pa.Table.from_arrays([cols[f.name] if f.name in cols else rows.column(f.name) for f in schema.VIDEOS],
                                   schema=schema.VIDEOS)
        return self._with_extras(out)

    def _with_extras(self, videos: pa.Table) -> pa.Table:
        if self._extras is None:
            return videos
        # Each video's row of the todo table (its ids are unique): a hash of them, O(todo) per flush.
        extra = self._extras.take(pc.index_in(videos.column("video_id"), value_set=self._extras.column("video_id")))
        for name in self._extras.column_names[1:]:
            videos = videos.append_column(self.videos_schema.field(name), extra.column(name))
        return videos

    # -- commit ---------------------------------------------------------------------------
    def commit(self, wall_sec: float, replaced: Optional[pa.Array] = None, map_files=None) -> RunSummary:
        """Commit the run (commit.StagedRun.commit): its accepted files in, the earlier rows of the
        videos ``replaced`` (relabeled this run) out; visible from the commit record's put."""
        if self._incoming:
            raise RuntimeError(f"run {self.run_id}: reports of {sorted(self._incoming)[:10]} arrived in part: "
                               "not committing")
        pending = self.aggregator.pending
        if pending:
            raise RuntimeError(f"run {self.run_id}: rows still pending for videos {pending[:10]} (their video "
                               "row or some clips never arrived, or arrived again after the video was "
                               "finished): not committing")
        self._flush()
        s = self.summary
        if s.videos != self.expected:
            raise RuntimeError(f"run {self.run_id}: {s.videos} videos finished, {self.expected} handed to Ray (a "
                               f"video {'lost' if s.videos < self.expected else 'delivered twice'}): not committing")
        clip_files = self._clip_files()
        s.weights, s.runtime = self.model_info or (s.weights, s.runtime)
        s.random_weights = is_random(s.weights)
        s.wall_sec = round(wall_sec, 3)
        s.clips_per_sec = round(s.clips / wall_sec, 3) if wall_sec > 0 else 0.0
        self.clock.fill(s)
        s.committed = True
        s.committed_at = datetime.now(timezone.utc).isoformat()
        record = asdict(s)
        record.pop("files")
        s.files = self.staged.commit(record, clip_files, replaced, map_files)
        return s

    def _clip_files(self) -> list[DataFile]:
        """The clips files to commit: every reported file with rows, those holding clips of
        failed videos rewritten without them (rare: a video past the decode stage's hold bound
        that then failed)."""
        out = []
        for name, written in sorted(self._files.items()):
            if name in self._purge:
                name, written = self.staged.drop_videos(name, self._purge[name])
            if written is not None:
                out.append(written)
        return out

    def abort(self) -> None:
        """A run that failed in-process: drop its staging (a killed one is swept next time)."""
        self.staged.abort()


def _counts(values: pa.Array | pa.ChunkedArray) -> dict[str, int]:
    vc = pc.value_counts(values)
    return {str(v): int(c) for v, c in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist())}


def _or(values: pa.ChunkedArray | pa.Array, default: str) -> pa.Array:
    """``values`` with null and "" replaced by ``default``."""
    empty = pc.fill_null(pc.equal(values, ""), True)
    return pc.if_else(empty, default, values)
