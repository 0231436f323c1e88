"""Stage 4: turn labeled rows into the `clips` and `videos` Parquet datasets of one run.

Runs on the driver over small rows (no pixels). A video's clips are held until its video
row and all its clips have arrived, then written together with the video-level top-k (mean
of the clip softmaxes); a video whose decode failed half-way keeps no clips. Files go to a
staging directory and become visible only at commit.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import schema
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
    videos: int = 0
    videos_ok: int = 0
    videos_error: int = 0
    clips: int = 0
    errors_by_class: dict = field(default_factory=dict)
    wall_sec: float = 0.0
    clips_per_sec: float = 0.0
    committed: bool = False
    config: dict = field(default_factory=dict)  # the validated run config, for audits and reruns

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def text(self) -> str:
        errors = ", ".join(f"{k}={v}" for k, v in sorted(self.errors_by_class.items())) or "none"
        lines = [
            f"run {self.run_id} -> {self.output} ({'committed' if self.committed else 'NOT committed'})",
            f"  videos {self.videos} (ok {self.videos_ok}, error {self.videos_error}); errors: {errors}",
            f"  clips {self.clips} in {self.wall_sec:.1f} s = {self.clips_per_sec:.2f} clips/s",
            f"  weights {self.weights}  runtime {self.runtime}  sampling {self.sampling}",
        ]
        if self.random_weights:
            lines.append("  !! RANDOM WEIGHTS: these labels are meaningless (smoke run); every row says so !!")
        return "\n".join(lines)


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

    def _roll(self) -> None:
        if self._w is not None:
            self._w.close()
            self._f.close()
            self._w, self._f, self.rows_in_part = None, None, 0
            self.part += 1

    def close(self) -> None:
        self._roll()


class RunWriter:
    def __init__(self, output: str, run_id: str, manifest: pa.Table, *, sampling: str, topk_n: int,
                 rows_per_file: int = 200_000, storage=None, flush_rows: int = 2000,
                 config: Optional[dict] = None):
        self.output, self.run_id, self.sampling, self.k = output.rstrip("/"), run_id, sampling, topk_n
        self.fs, root = filesystem(self.output, storage)
        self.root = root.rstrip("/")
        self.staging = join(self.root, "_staging", f"run_id={run_id}")
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
        self._pending_clips: dict[str, list[dict]] = {}
        self._pending_video: dict[str, dict] = {}
        self._clip_buf: list[dict] = []
        self._video_buf: list[dict] = []
        self.flush_rows = flush_rows
        self.summary = RunSummary(run_id=run_id, output=output, sampling=sampling, config=config or {})
        self.labels = np.array(categories(), dtype=object)
        self._model_info: Optional[tuple[str, str]] = None

    # -- streaming in ---------------------------------------------------------------------
    def add(self, batch: pa.Table) -> None:
        for row in batch.to_pylist():
            vid = row["video_id"]
            if row["weights"] and self._model_info is None:
                self._model_info = (row["weights"], row["runtime"])
            if row["kind"] == "clip":
                self._pending_clips.setdefault(vid, []).append(row)
            else:
                self._pending_video[vid] = row
            self._maybe_finish(vid)
        if len(self._clip_buf) >= self.flush_rows or len(self._video_buf) >= self.flush_rows:
            self._flush()

    def _maybe_finish(self, vid: str) -> None:
        video = self._pending_video.get(vid)
        clips = self._pending_clips.get(vid, [])
        if video is None or len(clips) < (video["num_clips"] or 0):
            return
        del self._pending_video[vid]
        self._pending_clips.pop(vid, None)
        ok = video["status"] == "ok"
        clips = sorted(clips, key=lambda r: r["clip_index"]) if ok else []
        self._clip_buf.extend(self._clip_out(c) for c in clips)
        self._video_buf.append(self._video_out(video, clips))
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

    def _video_out(self, v: dict, clips: list[dict]) -> dict:
        out = {name: v.get(name) for name in schema.VIDEOS.names}
        out.update(num_clips=len(clips), model=MODEL_NAME, sampling=self.sampling, created_at=self.created_at)
        weights, runtime = self._model_info or ("", "")
        out.update(weights=v.get("weights") or weights, runtime=v.get("runtime") or runtime)
        if clips:
            mean = np.mean(np.stack([np.asarray(c["probs"], dtype=np.float32) for c in clips]), axis=0)
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
        if self._pending_video or self._pending_clips:
            missing = sorted(set(self._pending_video) | set(self._pending_clips))[:10]
            raise RuntimeError(f"run {self.run_id}: rows still pending for videos {missing}: not committing")
        self._flush()
        self._clips.close()
        self._videos.close()
        s = self.summary
        s.weights, s.runtime = self._model_info or ("", "")
        s.random_weights = s.weights.startswith("random:")
        s.wall_sec = round(wall_sec, 3)
        s.clips_per_sec = round(s.clips / wall_sec, 3) if wall_sec > 0 else 0.0
        for table in ("clips", "videos"):
            dest = join(self.root, table, f"run_id={self.run_id}")
            self.fs.makedirs(join(self.root, table), exist_ok=True)
            _move_tree(self.fs, join(self.staging, table), dest)
        s.committed = True
        runs = join(self.root, "_runs")
        self.fs.makedirs(runs, exist_ok=True)
        with self.fs.open(join(runs, f"run_id={self.run_id}.json"), "w") as f:
            f.write(s.to_json())
        self._remove_staging()
        return s

    def _remove_staging(self) -> None:
        for path in (self.staging, join(self.root, "_staging")):
            try:
                if self.fs.exists(path) and not self.fs.ls(path):
                    self.fs.rmdir(path)
                elif path == self.staging and self.fs.exists(path):
                    self.fs.rm(path, recursive=True)
            except OSError:
                pass  # a concurrent run's staging: leave it


def _move_tree(fs, src: str, dest: str) -> None:
    """Local: one directory rename. Object stores have no directories (and no rename): move
    each file under the ``src`` prefix (copy + delete on S3)."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if "file" in protocols or "local" in protocols:
        fs.mv(src, dest, recursive=True)
        return
    for path in sorted(fs.find(src)):
        fs.mv(path, join(dest, path[len(src.rstrip("/")):]))
