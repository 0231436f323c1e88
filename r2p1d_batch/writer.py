"""Stage 4: turn labeled rows into the `clips` and `videos` Parquet datasets of one run.

Runs on the driver over small rows (no pixels). A video's clips are held until its video
row and all its clips have arrived, then written together with the video-level top-k (mean
of the clip softmaxes); a video whose decode failed half-way keeps no clips. Rows that a
retried Ray task delivers twice are dropped (by video_id, clip_index), so memory is bounded
by the videos in flight. Files go to OUT/_staging/run_id=X/ under a lease and become visible
only at commit (see runs.py for the protocol).
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import runs, schema
from .classify import topk
from .model import MODEL_NAME, categories
from .storage import filesystem, join


@dataclass
class RunSummary:
    run_id: str
    output: str
    weights: str = ""
    random_weights: bool = False
    runtime: str = ""
    sampling: str = ""
    mode: str = "incremental"
    manifest_rows: int = 0
    # What this run did with each manifest row (runs.select): labeled = new + changed +
    # retried + forced; skipped rows already have a committed row for the same key.
    videos_new: int = 0
    videos_changed: int = 0
    videos_retried: int = 0
    videos_forced: int = 0
    videos_skipped: int = 0
    videos: int = 0
    videos_ok: int = 0
    videos_error: int = 0
    clips: int = 0
    errors_by_class: dict = field(default_factory=dict)
    wall_sec: float = 0.0
    clips_per_sec: float = 0.0
    # Start-up vs steady state, from labeled clip rows reaching the writer (driver clock):
    # first_clip_sec = run start to the first one (validation, Ray and actor start-up, the first
    # decode and classify); steady_clips_per_sec = clips after the first delivered block (one per
    # video, or per ~128 MiB of clips) / (last arrival - first arrival). None when no clip, or
    # only one block of clips, arrived.
    first_clip_sec: Optional[float] = None
    steady_clips_per_sec: Optional[float] = None
    committed: bool = False
    config: dict = field(default_factory=dict)  # the validated run config, for audits and reruns
    committed_at: str = ""
    files: list = field(default_factory=list)  # data files of this run, relative to the output root

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(asdict(self), indent=indent, sort_keys=True)

    def text(self) -> str:
        errors = ", ".join(f"{k}={v}" for k, v in sorted(self.errors_by_class.items())) or "none"
        lines = [
            f"run {self.run_id} -> {self.output} ({'committed' if self.committed else 'NOT committed'})",
            f"  manifest {self.manifest_rows} ({self.mode}): new {self.videos_new}, changed {self.videos_changed}, "
            f"retried {self.videos_retried}, forced {self.videos_forced}, skipped {self.videos_skipped}",
            f"  videos {self.videos} (ok {self.videos_ok}, error {self.videos_error}); errors: {errors}",
            f"  clips {self.clips} in {self.wall_sec:.1f} s = {self.clips_per_sec:.2f} clips/s" + self._steady_text(),
            f"  weights {self.weights}  runtime {self.runtime}  sampling {self.sampling}",
        ]
        if self.random_weights:
            lines.append("  !! RANDOM WEIGHTS: these labels are meaningless (smoke run); every row says so !!")
        return "\n".join(lines)

    def _steady_text(self) -> str:
        if self.first_clip_sec is None:
            return ""
        steady = f", then {self.steady_clips_per_sec:.2f} clips/s" if self.steady_clips_per_sec else ""
        return f" (first clip at {self.first_clip_sec:.1f} s{steady})"


class _PartWriter:
    """Rolling Parquet part files under one directory."""

    def __init__(self, fs, directory: str, sch: pa.Schema, rows_per_file: int):
        self.fs, self.dir, self.schema, self.limit = fs, directory, sch, rows_per_file
        self.part, self.rows_in_part, self._w, self._f = 0, 0, None, None
        fs.makedirs(directory, exist_ok=True)

    def write(self, rows: list[dict]) -> None:
        while rows:
            if self._w is None:
                self._f = self.fs.open(join(self.dir, f"part-{self.part:05d}.parquet"), "wb")
                self._w = pq.ParquetWriter(self._f, self.schema, compression="zstd")
            take = rows[: self.limit - self.rows_in_part]
            self._w.write_table(pa.Table.from_pylist(take, schema=self.schema))
            self.rows_in_part += len(take)
            rows = rows[len(take) :]
            if self.rows_in_part >= self.limit:
                self._roll()

    @property
    def parts(self) -> int:
        """Part files written (closed) so far."""
        return self.part

    def _roll(self) -> None:
        if self._w is not None:
            self._w.close()
            self._f.close()
            self._w, self._f, self.rows_in_part = None, None, 0
            self.part += 1

    def close(self) -> None:
        self._roll()


class RunWriter:
    HEARTBEAT_SEC = 30.0

    def __init__(self, output: str, run_id: str, manifest: pa.Table, *, sampling: str, topk_n: int,
                 rows_per_file: int = 200_000, storage=None, flush_rows: int = 2000,
                 config: Optional[dict] = None, started: Optional[float] = None):
        self.output, self.run_id, self.sampling, self.k = output.rstrip("/"), run_id, sampling, topk_n
        self.fs, root = filesystem(self.output, storage)
        self.root = root.rstrip("/")
        self.staging = join(self.root, runs.STAGING_DIR, f"run_id={run_id}")
        runs.write_lease(self.fs, self.root, run_id)  # first: the run holds the output from here
        self._stop_beat = threading.Event()
        threading.Thread(target=self._heartbeat, name=f"lease-{run_id}", daemon=True).start()
        self.created_at = datetime.now(timezone.utc)
        extras = [f for f in manifest.schema if f.name not in ("video_id", "uri", "start_sec", "end_sec")]
        self.videos_schema = pa.schema(list(schema.VIDEOS) + extras)
        self._extras = {}
        if extras:
            ids = manifest.column("video_id").to_pylist()
            for vid, ex in zip(ids, manifest.select([f.name for f in extras]).to_pylist()):
                self._extras[vid] = ex
        self._clips = _PartWriter(self.fs, join(self.staging, "clips"), schema.CLIPS, rows_per_file)
        self._videos = _PartWriter(self.fs, join(self.staging, "videos"), self.videos_schema, rows_per_file)
        self._pending_clips: dict[str, dict[int, dict]] = {}
        self._pending_video: dict[str, dict] = {}
        self._prob_sums: dict[str, np.ndarray] = {}  # running sum of clip softmaxes per pending video
        self._done: set[str] = set()  # video ids already written (a retried task may resend rows)
        self._clip_buf: list[dict] = []
        self._video_buf: list[dict] = []
        self.flush_rows = flush_rows
        self.duplicates_dropped = 0
        self.summary = RunSummary(run_id=run_id, output=output, sampling=sampling, config=config or {})
        self.labels = np.array(categories(), dtype=object)
        self._model_info: Optional[tuple[str, str]] = None
        # Clip arrivals for first_clip_sec / steady_clips_per_sec (perf_counter; started = run start).
        self._started = time.perf_counter() if started is None else started
        self._first_arrival: Optional[float] = None
        self._first_batch_clips = self._clips_arrived = 0
        self._last_arrival = 0.0

    def _heartbeat(self) -> None:
        # A thread, so the lease stays fresh while rows stall (actors starting, a long video).
        while not self._stop_beat.wait(self.HEARTBEAT_SEC):
            try:
                runs.write_lease(self.fs, self.root, self.run_id)
            except Exception:  # a transient store error: the next beat tries again
                pass

    # -- streaming in ---------------------------------------------------------------------
    def add(self, batch: pa.Table) -> None:
        arrived, new_clips = time.perf_counter(), 0
        for row in batch.to_pylist():
            vid = row["video_id"]
            if vid in self._done:
                self.duplicates_dropped += 1
                continue
            if row["weights"] and self._model_info is None:
                self._model_info = (row["weights"], row["runtime"])
            if row["kind"] == "clip":
                pending = self._pending_clips.setdefault(vid, {})
                probs = row.pop("probs")  # 400 floats: summed here, not kept per clip
                if row["clip_index"] not in pending:
                    pending[row["clip_index"]] = row
                    acc = self._prob_sums.get(vid)
                    self._prob_sums[vid] = np.asarray(probs, np.float64) + (0.0 if acc is None else acc)
                    new_clips += 1
            else:
                self._pending_video[vid] = row
            self._maybe_finish(vid)
        if new_clips:
            self._clip_arrival(arrived, new_clips)
        if len(self._clip_buf) >= self.flush_rows or len(self._video_buf) >= self.flush_rows:
            self._flush()

    def _clip_arrival(self, t: float, n: int) -> None:
        if self._first_arrival is None:
            self._first_arrival, self._first_batch_clips = t, n
        self._last_arrival, self._clips_arrived = t, self._clips_arrived + n

    def _maybe_finish(self, vid: str) -> None:
        video = self._pending_video.get(vid)
        clips = self._pending_clips.get(vid, {})
        if video is None or len(clips) < (video["num_clips"] or 0):
            return
        del self._pending_video[vid]
        self._pending_clips.pop(vid, None)
        prob_sum = self._prob_sums.pop(vid, None)
        self._done.add(vid)
        ok = video["status"] == "ok"
        clips = [clips[i] for i in sorted(clips)] if ok else []
        self._clip_buf.extend(self._clip_out(c) for c in clips)
        self._video_buf.append(self._video_out(video, clips, prob_sum))
        s = self.summary
        s.videos += 1
        s.clips += len(clips)
        if ok:
            s.videos_ok += 1
        else:
            s.videos_error += 1
            s.errors_by_class[video["error_class"]] = s.errors_by_class.get(video["error_class"], 0) + 1

    def _clip_out(self, c: dict) -> dict:
        out = {name: c.get(name) for name in schema.CLIPS.names}
        out.update(model=MODEL_NAME, sampling=self.sampling, created_at=self.created_at)
        return out

    def _video_out(self, v: dict, clips: list[dict], prob_sum: Optional[np.ndarray]) -> dict:
        out = {name: v.get(name) for name in schema.VIDEOS.names}
        out.update(num_clips=len(clips), model=MODEL_NAME, sampling=self.sampling, created_at=self.created_at)
        weights, runtime = self._model_info or ("", "")
        out.update(weights=v.get("weights") or weights, runtime=v.get("runtime") or runtime)
        if clips:
            mean = (prob_sum / len(clips)).astype(np.float32)
            ids, scores = topk(mean[None, :], self.k)
            out.update(
                label=self.labels[ids[0, 0]], score=float(scores[0, 0]),
                topk_labels=self.labels[ids[0]].tolist(), topk_scores=scores[0].tolist(),
            )
        out.update(self._extras.get(v["video_id"], {}))
        return out

    def _flush(self) -> None:
        self._clips.write(self._clip_buf)
        self._videos.write(self._video_buf)
        self._clip_buf, self._video_buf = [], []

    # -- commit ---------------------------------------------------------------------------
    def commit(self, wall_sec: float) -> RunSummary:
        """Publish the staged files, then put the run record: the run is visible from that put."""
        if self._pending_video or self._pending_clips:
            missing = sorted(set(self._pending_video) | set(self._pending_clips))[:10]
            raise RuntimeError(f"run {self.run_id}: rows still pending for videos {missing}: not committing")
        self._flush()
        self._clips.close()
        self._videos.close()
        s = self.summary
        s.weights, s.runtime = self._model_info or (s.weights, s.runtime)
        s.random_weights = s.weights.startswith("random:")
        s.wall_sec = round(wall_sec, 3)
        s.clips_per_sec = round(s.clips / wall_sec, 3) if wall_sec > 0 else 0.0
        if self._first_arrival is not None:
            s.first_clip_sec = round(self._first_arrival - self._started, 3)
            span = self._last_arrival - self._first_arrival
            if span > 0:
                s.steady_clips_per_sec = round((self._clips_arrived - self._first_batch_clips) / span, 3)
        self._stop_beat.set()
        files = []
        for table, part_writer in zip(runs.TABLES, (self._clips, self._videos)):
            published = runs.publish(self.fs, join(self.staging, table), join(self.root, table, f"run_id={self.run_id}"))
            if len(published) != part_writer.parts:  # staging was removed under us (a sweep misjudged the lease)
                raise RuntimeError(f"run {self.run_id}: {part_writer.parts} {table} parts written, "
                                   f"{len(published)} found at commit: not committing")
            files += [f[len(self.root) + 1:] for f in published]
        s.files = files
        s.committed = True
        s.committed_at = datetime.now(timezone.utc).isoformat()
        runs.write_record(self.fs, self.root, self.run_id, s.to_json())
        self._remove_staging()
        return s

    def abort(self) -> None:
        """A run that failed in-process: drop its staging (a killed one is swept next time)."""
        self._stop_beat.set()
        for w in (self._clips, self._videos):
            try:
                w.close()
            except Exception:
                pass
        self._remove_staging()

    def _remove_staging(self) -> None:
        try:
            if self.fs.exists(self.staging):
                self.fs.rm(self.staging, recursive=True)
            top = join(self.root, runs.STAGING_DIR)
            if self.fs.exists(top) and not self.fs.ls(top):
                self.fs.rmdir(top)
        except OSError:
            pass  # a concurrent listing or an S3 prefix: harmless, swept later
