"""History section (``r2p1d bench --only history``): what years of nightly runs cost the output.

A synthesized collection (``videos`` x ``clips_per_video`` clip rows, written directly as the
writer stage writes them: no decoding), then ``nights`` runs that each relabel ``churn`` of the
videos, chosen at random, committed through the job's own protocol (runs/commit.py: the files
holding the relabeled videos' rows rewritten without them, the new rows added, one record, the
Delta commits). Measured: the nightly commit (wall, the bytes rewritten, peak RSS of the
process), the query figures after the first night and after the last (``query.connect``,
``select label, count(*) from clips``, ``count(*)``, data files), and the same after
``r2p1d maintain`` (compaction; history kept to the newest runs), with the bytes on disk
against the current rows written once.
"""
from __future__ import annotations

import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import schema
from ..classifying.weights import categories
from ..config import MaintainConfig
from ..runs import commit, tables
from ..storage import filesystem
from .output import status_mb

LABEL_SQL = "SELECT label, count(*) FROM clips GROUP BY label"
COUNT_SQL = "SELECT count(*) FROM clips"


def _ids(ix: np.ndarray) -> pa.Array:
    return pa.array(np.char.add("v", np.char.zfill(ix.astype(str), 8)), pa.string())


def clip_rows(video_ix: np.ndarray, clips_per_video: int, run_id: str, rng: np.random.Generator) -> pa.Table:
    """Clip rows (schema.CLIPS_TABLE) of the videos ``video_ix``, sorted by (video_id, clip_index)."""
    video_ix = np.sort(video_ix)
    n = len(video_ix) * clips_per_video
    vid = np.repeat(video_ix, clips_per_video)
    clip = np.tile(np.arange(clips_per_video, dtype=np.int32), len(video_ix))
    names = np.array(categories(), dtype=object)
    top = rng.integers(0, len(names), (n, 5)).astype(np.int16)
    scores = np.sort(rng.random((n, 5), dtype=np.float32), axis=1)[:, ::-1].copy()
    offsets5 = pa.array(np.arange(0, 5 * n + 1, 5, dtype=np.int32))
    offsets16 = pa.array(np.arange(0, 16 * n + 1, 16, dtype=np.int32))
    cols = {
        "video_id": _ids(vid), "uri": pa.array(np.char.add("s3://bucket/videos/", np.char.zfill(vid.astype(str), 8))),
        "clip_index": pa.array(clip), "start_sec": pa.array(clip * 2.0), "end_sec": pa.array(clip * 2.0 + 1.07),
        "frame_pts": pa.ListArray.from_arrays(offsets16, pa.array(np.arange(16 * n, dtype=np.int64) % 100_000)),
        "padded_frames": pa.array(np.zeros(n, np.int16)),
        "clip_sha": pa.array([f"{h:016x}" * 4 for h in rng.integers(0, 2**63, n)]),
        "label": pa.array(names[top[:, 0]].tolist()), "label_id": pa.array(top[:, 0]), "score": pa.array(scores[:, 0]),
        "topk_ids": pa.ListArray.from_arrays(offsets5, pa.array(top.ravel())),
        "topk_labels": pa.ListArray.from_arrays(offsets5, pa.array(names[top.ravel()].tolist())),
        "topk_scores": pa.ListArray.from_arrays(offsets5, pa.array(scores.ravel())),
        "model": pa.repeat(pa.scalar("r2plus1d_18"), n), "weights": pa.repeat(pa.scalar("kinetics400:DEFAULT"), n),
        "runtime": pa.repeat(pa.scalar("onnxruntime-cpu-fp32"), n), "sampling": pa.repeat(pa.scalar("dense"), n),
        "created_at": pa.repeat(pa.scalar(0, pa.timestamp("us", tz="UTC")), n),
        "embedding": pa.nulls(n, pa.list_(pa.float32())), "run_id": pa.repeat(pa.scalar(run_id), n),
    }
    return pa.table([cols[f.name] for f in schema.CLIPS_TABLE], schema=schema.CLIPS_TABLE)


def video_rows(video_ix: np.ndarray, clips_per_video: int, run_id: str) -> pa.Table:
    video_ix = np.sort(video_ix)
    n = len(video_ix)
    sch = schema.videos_table(schema.VIDEOS)
    cols = {f.name: pa.nulls(n, f.type) for f in sch}
    cols.update(video_id=_ids(video_ix), status=pa.repeat(pa.scalar("ok"), n),
                source_fingerprint=pa.array([f"etag:{run_id}"] * n),
                weights=pa.repeat(pa.scalar("kinetics400:DEFAULT"), n),
                num_clips=pa.array(np.full(n, clips_per_video, np.int32)), run_id=pa.repeat(pa.scalar(run_id), n))
    return pa.table(cols, schema=sch)


def _write(out: Path, table: str, rows: pa.Table, rows_per_file: int, run_id: str) -> list[tables.DataFile]:
    fs, _ = filesystem(str(out))
    (out / table).mkdir(parents=True, exist_ok=True)
    return [tables.write_file(fs, str(out / table), tables.part_name(run_id), rows.slice(s, rows_per_file))
            for s in range(0, rows.num_rows, rows_per_file)]


def _processes(pool: ProcessPoolExecutor):
    """A commit.MapFiles over ``pool``: the rewrites leave this process, as a label run gives them
    to Ray tasks, so this process's memory is the driver's."""
    def map_files(fn, args):
        return list(pool.map(fn, *zip(*args))) if args else []
    return map_files


def _fresh_driver_night(out: Path, run_id: str, video_ix: np.ndarray, clips_per_video: int, rows_per_file: int,
                        seed: int, workers: int) -> dict:
    """One relabeling night committed by this (fresh) process, its rewrites in worker processes of
    its own: the night's figures and this process's peak RSS, a nightly driver's (imports, the
    night's rows, the commit)."""
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        got = _night(out, run_id, video_ix, clips_per_video, rows_per_file, np.random.default_rng(seed),
                     relabel=True, map_files=_processes(pool))
    return {**got, "peak_rss_gib": status_mb("VmHWM") / 1024}


def _night(out: Path, run_id: str, video_ix: np.ndarray, clips_per_video: int, rows_per_file: int,
           rng: np.random.Generator, relabel: bool, map_files=commit.threads) -> dict:
    clips = _write(out, "clips", clip_rows(video_ix, clips_per_video, run_id, rng), rows_per_file, run_id)
    videos = _write(out, "videos", video_rows(video_ix, clips_per_video, run_id), rows_per_file, run_id)
    rewritten: list[int] = []
    busy = [0.0]

    def timed(fn, args):
        t = time.perf_counter()
        got = map_files(fn, args)
        busy[0] += time.perf_counter() - t
        rewritten.extend(new.size for r in got if r is not None for new in [r[1]] if new is not None)
        return got

    t = time.perf_counter()
    commit.commit_run(str(out), run_id, {"run_id": run_id, "videos": len(video_ix)},
                      {"clips": (schema.CLIPS_TABLE, clips), "videos": (schema.videos_table(schema.VIDEOS), videos)},
                      _ids(video_ix) if relabel else None, timed)
    wall = time.perf_counter() - t
    return {"commit_s": wall, "rewrite_s": busy[0], "driver_own_s": wall - busy[0], "bytes_rewritten": sum(rewritten)}


def _query_figures(out: Path) -> dict:
    from .. import query

    t = time.perf_counter()
    con = query.connect(str(out))
    connect_s = time.perf_counter() - t
    best = {}
    for name, sql in (("label_count_s", LABEL_SQL), ("count_s", COUNT_SQL)):
        times = []
        for _ in range(3):
            t = time.perf_counter()
            con.sql(sql).fetchall()
            times.append(time.perf_counter() - t)
        best[name] = min(times)
    files = tables.data_files(tables.open_table(str(out), "clips"))
    on_disk = sum(p.stat().st_size for p in (out / "clips").glob("*.parquet"))
    return {"connect_s": round(connect_s, 4), **{k: round(v, 4) for k, v in best.items()},
            "clip_rows": con.sql(COUNT_SQL).fetchall()[0][0], "data_files": files.num_rows,
            "files_on_disk": len(list((out / "clips").glob("*.parquet"))), "bytes_on_disk": on_disk}


def history_rows(videos: int, clips_per_video: int, nights: int, churn: float, rows_per_file: int, root: Path,
                 keep_runs: int = 1, seed: int = 0, maintain_every: int = 0, workers: int = 2
                 ) -> tuple[list[dict], list[str]]:
    """``maintain_every``: run ``r2p1d maintain`` (compact, keep the newest ``maintain_every``
    runs, vacuum) after every that many nights, as a weekly cron would; 0: never until the end."""
    from ..runs.maintain import maintain

    rng = np.random.default_rng(seed)
    out = root / f"history-{videos}x{clips_per_video}-{nights}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    _night(out, "20250101T000000Z-night0", np.arange(videos), clips_per_video, rows_per_file, rng, relabel=False)
    rows = [{"stage": "after night 1", **_query_figures(out)}]
    first_files = rows[0]["data_files"]
    per_night, maintained = [], []
    k = max(1, int(round(videos * churn)))
    # spawn: this process holds delta-rs's runtime threads, which a fork would copy half-held
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        map_files = _processes(pool)
        for night in range(1, nights):
            run_id = f"2025{1 + night // 28:02d}{1 + night % 28:02d}T000000Z-n{night:05d}"
            chosen = rng.choice(videos, k, replace=False)
            if night == nights - 1:  # the last night in a fresh process: a nightly driver's memory
                with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as driver:
                    last = driver.submit(_fresh_driver_night, out, run_id, chosen, clips_per_video, rows_per_file,
                                         seed + night, workers).result()
                per_night.append(last)
            else:
                per_night.append(_night(out, run_id, chosen, clips_per_video, rows_per_file, rng, relabel=True,
                                        map_files=map_files))
            if maintain_every and night % maintain_every == 0 and night < nights - 1:
                t = time.perf_counter()
                maintain(str(out), cfg=MaintainConfig(keep_runs=maintain_every, min_retention_hours=0),
                         rows_per_file=rows_per_file)
                maintained.append(time.perf_counter() - t)
    rss = per_night[-1].get("peak_rss_gib", 0.0) if per_night else 0.0
    commits = np.array([n["commit_s"] for n in per_night]) if per_night else np.zeros(1)
    rewrites = np.array([n["rewrite_s"] for n in per_night]) if per_night else np.zeros(1)
    own_s = np.array([n["driver_own_s"] for n in per_night]) if per_night else np.zeros(1)
    rewritten = np.array([n["bytes_rewritten"] for n in per_night]) if per_night else np.zeros(1)
    rows.append({"stage": f"after night {nights}", **_query_figures(out),
                 "nightly_commit_s_median": round(float(np.median(commits)), 3),
                 "nightly_commit_s_max": round(float(commits.max()), 3),
                 "nightly_rewrite_s_median": round(float(np.median(rewrites)), 3),
                 "nightly_driver_own_s_median": round(float(np.median(own_s)), 3),
                 "nightly_driver_own_s_max": round(float(own_s.max()), 3),
                 "nightly_bytes_rewritten_median": int(np.median(rewritten)),
                 "driver_peak_rss_gib": round(rss, 3),
                 **({"maintain_between_nights_s_median": round(float(np.median(maintained)), 2)}
                    if maintained else {})})
    t = time.perf_counter()
    m = maintain(str(out), cfg=MaintainConfig(keep_runs=keep_runs, min_retention_hours=0), rows_per_file=rows_per_file)
    after = _query_figures(out)
    # The current rows written once, compactly: what the table's bytes are compared with.
    own = out / "_own.parquet"
    current = tables.open_table(str(out), "clips").to_pyarrow_table()
    pq.write_table(current, own, compression="zstd", row_group_size=tables.ROW_GROUP_ROWS)
    own_bytes = own.stat().st_size
    own.unlink()
    maintain_s = round(time.perf_counter() - t, 2)
    rows.append({"stage": f"after maintain (keep_runs={keep_runs})", **after, "maintain_s": maintain_s,
                 "data_files_vs_night_1": round(after["data_files"] / first_files, 2),
                 "bytes_on_disk_vs_current_rows": round(after["bytes_on_disk"] / own_bytes, 3),
                 "expired_runs": len(m.expired_runs)})
    base = rows[0]
    for r in rows[1:]:
        r["label_count_vs_night_1"] = round(r["label_count_s"] / base["label_count_s"], 2)
        r["connect_vs_night_1"] = round(r["connect_s"] / base["connect_s"], 2)
    notes = [f"{videos} videos x {clips_per_video} clips, then {nights - 1} nights relabeling {churn:.1%} "
             f"({k} videos) each, rows written directly (no decode) through runs/commit.commit_run; the "
             f"rewrites run in {workers} worker processes (a label run gives them to Ray tasks across the cluster; "
             f"nightly_commit_s waits for them, nightly_driver_own_s is the driver's own part: the record, the "
             f"Delta commits); driver_peak_rss_gib: a fresh process that commits the last night (imports included); "
             + (f"maintain (keep_runs={maintain_every}) every {maintain_every} nights; " if maintain_every else "")
             + f"output.rows_per_file={rows_per_file}; {time.perf_counter() - t0:.0f} s in all",
             "query times: best of 3 in one DuckDB connection; connect_s: query.connect (three Delta tables opened, "
             "the views built)"]
    shutil.rmtree(out, ignore_errors=True)
    return rows, notes
