"""Stage 4: labeled rows in, the `clips` and `videos` Parquet datasets of one run out.

Runs on the driver over small rows (no pixels): aggregate.VideoAssembler turns the stream into
finished videos, this module shapes their output rows and keeps the run's summary and clock,
and commit.StagedRun stages the files under a lease and makes them visible at commit.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Optional

import numpy as np
import pyarrow as pa

from .. import schema
from ..classifying.model import MODEL_NAME, categories
from .aggregate import FinishedVideo, VideoAssembler
from .commit import StagedRun
from .summary import RunSummary


class ArrivalClock:
    """Clip arrivals at the writer (perf_counter), for first_clip_sec and steady_clips_per_sec."""

    def __init__(self, started: float):
        self.started = started
        self.first: Optional[float] = None
        self.last = 0.0
        self.first_batch = self.total = 0

    def arrived(self, t: float, n: int) -> None:
        if self.first is None:
            self.first, self.first_batch = t, n
        self.last, self.total = t, self.total + n

    def fill(self, s: RunSummary) -> None:
        if self.first is None:
            return
        s.first_clip_sec = round(self.first - self.started, 3)
        span = self.last - self.first
        if span > 0:
            s.steady_clips_per_sec = round((self.total - self.first_batch) / span, 3)


class RunWriter:
    def __init__(self, output: str, run_id: str, manifest: pa.Table, *, sampling: str, topk_n: int,
                 rows_per_file: int = 200_000, storage=None, flush_rows: int = 2000,
                 config: Optional[dict] = None, started: Optional[float] = None):
        self.run_id, self.sampling = run_id, sampling
        extras = [f for f in manifest.schema if f.name not in ("video_id", "uri", "start_sec", "end_sec")]
        self.videos_schema = pa.schema(list(schema.VIDEOS) + extras)
        self._extras: dict[str, dict] = {}
        if extras:
            ids = manifest.column("video_id").to_pylist()
            self._extras = dict(zip(ids, manifest.select([f.name for f in extras]).to_pylist()))
        self.staged = StagedRun(output, run_id, {"clips": schema.CLIPS, "videos": self.videos_schema},
                                rows_per_file=rows_per_file, storage=storage)
        self.created_at = datetime.now(timezone.utc)
        self.assembler = VideoAssembler(np.array(categories(), dtype=object), topk_n)
        self.summary = RunSummary(run_id=run_id, output=output, sampling=sampling, config=config or {})
        self.clock = ArrivalClock(time.perf_counter() if started is None else started)
        self.flush_rows = flush_rows
        self._clip_buf: list[dict] = []
        self._video_buf: list[dict] = []

    @property
    def duplicates_dropped(self) -> int:
        return self.assembler.duplicates_dropped

    # -- streaming in ---------------------------------------------------------------------
    def add(self, batch: pa.Table) -> None:
        arrived, new_clips = time.perf_counter(), 0
        for row in batch.to_pylist():
            finished, new_clip = self.assembler.add(row)
            new_clips += new_clip
            if finished is not None:
                self._finished(finished)
        if new_clips:
            self.clock.arrived(arrived, new_clips)
        if len(self._clip_buf) >= self.flush_rows or len(self._video_buf) >= self.flush_rows:
            self._flush()

    def _finished(self, f: FinishedVideo) -> None:
        common = dict(model=MODEL_NAME, sampling=self.sampling, created_at=self.created_at)
        self._clip_buf.extend({**{n: c.get(n) for n in schema.CLIPS.names}, **common} for c in f.clips)
        v = f.video
        weights, runtime = self.assembler.model_info or ("", "")
        out = {n: v.get(n) for n in schema.VIDEOS.names}
        out.update(common, weights=v.get("weights") or weights, runtime=v.get("runtime") or runtime)
        out.update(self._extras.get(v["video_id"], {}))
        self._video_buf.append(out)
        s = self.summary
        s.videos += 1
        s.clips += len(f.clips)
        if v["status"] == "ok":
            s.videos_ok += 1
            by = s.videos_by_decoder
            by[v.get("decoder") or "cpu"] = by.get(v.get("decoder") or "cpu", 0) + 1
        else:
            s.videos_error += 1
            s.errors_by_class[v["error_class"]] = s.errors_by_class.get(v["error_class"], 0) + 1

    def _flush(self) -> None:
        self.staged.write("clips", self._clip_buf)
        self.staged.write("videos", self._video_buf)
        self._clip_buf, self._video_buf = [], []

    # -- commit ---------------------------------------------------------------------------
    def commit(self, wall_sec: float) -> RunSummary:
        """Publish the staged files, then put the run record: the run is visible from that put."""
        pending = self.assembler.pending
        if pending:
            raise RuntimeError(f"run {self.run_id}: rows still pending for videos {pending[:10]}: not committing")
        self._flush()
        s = self.summary
        s.weights, s.runtime = self.assembler.model_info or (s.weights, s.runtime)
        s.random_weights = s.weights.startswith("random:")
        s.wall_sec = round(wall_sec, 3)
        s.clips_per_sec = round(s.clips / wall_sec, 3) if wall_sec > 0 else 0.0
        self.clock.fill(s)
        s.committed = True
        s.committed_at = datetime.now(timezone.utc).isoformat()
        record = asdict(s)
        record.pop("files")
        s.files = self.staged.commit(record)
        return s

    def abort(self) -> None:
        """A run that failed in-process: drop its staging (a killed one is swept next time)."""
        self.staged.abort()
