"""The driver's plan at scale: a nightly incremental rerun of an N-row manifest over a committed
output of N videos, through ``pipeline.label`` itself, in a fresh process (wall time and peak RSS
of that process). Where every row is skipped the run starts no Ray: what is measured is reading
and validating the manifest, a stat per file, reading the committed videos files, the
selection, and the empty commit.

Inputs are real files and real Parquet, synthesised once and cached under
``~/.cache/r2p1d_batch/bench/scale``: N paths in directories of 1,000 (``files/d00042/v00042123.mp4``);
the files of one directory are hard links to one empty file, so 10M paths cost 10,000 inodes,
not 10M (the machine's inodes are shared), while each path still costs the plan a real stat.
The committed output is one run with a `videos` row per path whose fingerprint matches.

``changed_fraction`` > 0 measures the other nightly case: that share of the committed rows carry
an older fingerprint, so the plan labels them; the run is stopped at the first rows reaching the
driver, and the row reports the time to the start of execution (Ray Data submits the first
decode tasks) and to the first decoded rows.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import schema
from ..runs import commit, tables
from ..storage import filesystem
from .output import status_mb

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path.home() / ".cache" / "r2p1d_batch" / "bench" / "scale"
PER_DIR = 1000
WEIGHTS = "random:seed=0"
RUN_ID = "20260101T000000Z-scale0"
CHUNK = 1_000_000


def _dir(k: int) -> str:
    return f"d{k:05d}"


def ensure_files(n: int, root: Path = CACHE) -> dict[int, str]:
    """Paths for ``n`` rows under ``root/files`` (created once; a directory is complete when it
    holds .done). Returns the fingerprint of each directory's files (they share one inode)."""
    from ..storage import fingerprint

    fps = {}
    for k in range((n + PER_DIR - 1) // PER_DIR):
        d = root / "files" / _dir(k)
        seed = d / ".seed"
        if not (d / ".done").exists():
            d.mkdir(parents=True, exist_ok=True)
            seed.touch()
            for i in range(k * PER_DIR, (k + 1) * PER_DIR):
                p = d / f"v{i:08d}.mp4"
                if not p.exists():
                    os.link(seed, p)
            (d / ".done").touch()
        st = seed.stat()
        fps[k] = fingerprint({"size": st.st_size, "mtime": st.st_mtime})
    return fps


def _uris(start: int, stop: int, root: Path) -> pa.Array:
    i = np.arange(start, stop)
    d = pc.utf8_lpad(pc.cast(pa.array(i // PER_DIR), pa.string()), 5, "0")
    f = pc.utf8_lpad(pc.cast(pa.array(i), pa.string()), 8, "0")
    return pc.binary_join_element_wise(f"{root}/files/d", d, "/v", f, ".mp4", "")


def _ids(start: int, stop: int) -> pa.Array:
    return pc.binary_join_element_wise("clip", pc.utf8_lpad(pc.cast(pa.array(np.arange(start, stop)), pa.string()),
                                                            8, "0"), "")


def ensure_manifest(n: int, root: Path = CACHE) -> Path:
    """An ``n``-row manifest (video_id, uri, and a pass-through column ``split``)."""
    path = root / f"manifest-{n}.parquet"
    if path.exists():
        return path
    tmp = path.with_suffix(".tmp")
    sch = pa.schema([("video_id", pa.string()), ("uri", pa.string()), ("split", pa.string())])
    with pq.ParquetWriter(tmp, sch, compression="zstd") as w:
        for s in range(0, n, CHUNK):
            e = min(n, s + CHUNK)
            split = pa.array(np.array(["train", "val", "test"])[np.arange(s, e) % 3])
            w.write_table(pa.table([_ids(s, e), _uris(s, e, root), split], schema=sch))
    tmp.rename(path)
    return path


def ensure_output(n: int, fps: dict[int, str], changed_fraction: float = 0.0, root: Path = CACHE) -> Path:
    """A committed output (the Delta tables) of one run with a `videos` row per manifest row:
    fingerprints match, except every round(1 / changed_fraction)-th row's, which is an older one."""
    tag = f"delta-out-{n}" + (f"-changed{changed_fraction:g}" if changed_fraction else "")
    out = root / tag
    if commit.committed_run_ids(str(out)):
        return out
    shutil.rmtree(out, ignore_errors=True)
    (out / "videos").mkdir(parents=True)
    every = round(1 / changed_fraction) if changed_fraction else 0
    fs, _ = filesystem(str(out))
    sch = schema.videos_table(schema.VIDEOS.append(pa.field("split", pa.string())))
    files = []
    for p, s in enumerate(range(0, n, CHUNK)):
        e = min(n, s + CHUNK)
        idx = np.arange(s, e)
        fp_of_dir = np.array([fps[k] for k in range(s // PER_DIR, (e - 1) // PER_DIR + 1)], dtype=object)
        fp = fp_of_dir[idx // PER_DIR - s // PER_DIR]
        if every:
            fp = np.where(idx % every == 0, "size:0/mtime:1000000000.0", fp)
        cols = {f.name: pa.nulls(e - s, f.type) for f in sch}
        cols.update(video_id=_ids(s, e), uri=_uris(s, e, root), status=pa.array(np.full(e - s, "ok")),
                    error_class=pa.array(np.full(e - s, "")), error=pa.array(np.full(e - s, "")),
                    source_fingerprint=pa.array(fp, pa.string()), weights=pa.array(np.full(e - s, WEIGHTS)),
                    num_clips=pa.array(np.full(e - s, 10, np.int32)), label=pa.array(np.full(e - s, "archery")),
                    split=pa.array(np.array(["train", "val", "test"])[idx % 3]),
                    run_id=pa.array(np.full(e - s, RUN_ID)))
        files.append(tables.write_file(fs, str(out / "videos"), f"part-{RUN_ID}-{p:05d}.parquet",
                                       pa.table(cols, schema=sch)))
    commit.commit_run(str(out), RUN_ID, {"run_id": RUN_ID, "committed": True, "videos": n, "weights": WEIGHTS},
                      {"clips": (schema.CLIPS_TABLE, []), "videos": (sch, files)})
    return out


# -- the measured process -----------------------------------------------------------------------------
class _FirstRows(Exception):
    """Stops the measured run at the first labeled rows (nothing is committed)."""


def _child(manifest: str, output: str, first_rows: bool) -> None:
    """Runs in a fresh process: pipeline.label on ``manifest`` -> ``output``; prints one JSON line."""
    import logging

    from .. import config as config_mod
    from .. import pipeline
    from ..runs import writer

    marks: dict[str, float] = {}
    t0 = time.perf_counter()

    class Mark(logging.Handler):
        def emit(self, record):
            if "Starting execution" in record.getMessage():
                marks.setdefault("execution_start_s", time.perf_counter() - t0)

    logging.getLogger("ray.data").addHandler(Mark())
    if first_rows:
        add = writer.RunWriter.add

        def first(self, batch):
            marks.setdefault("first_rows_s", time.perf_counter() - t0)
            add(self, batch)
            raise _FirstRows

        writer.RunWriter.add = first
    cfg = config_mod.load(None, ["model.weights=random", "ray.progress_bars=false", "ray.num_cpus=2",
                                 "ray.object_store_memory_mb=300"], manifest=manifest, **{"output.path": output})
    out: dict = {"load_before": round(os.getloadavg()[0], 2)}
    try:
        s = pipeline.label(cfg)
        out.update(committed=s.committed, run_id=s.run_id, videos=s.videos,
                   **{f"videos_{d}": getattr(s, f"videos_{d}") for d in ("new", "changed", "skipped")})
    except _FirstRows:
        out["stopped"] = "at the first rows"
    import ray

    out.update(ray_started=ray.is_initialized(), load_after=round(os.getloadavg()[0], 2))
    out.update(wall_s=round(time.perf_counter() - t0, 2), **{k: round(v, 2) for k, v in marks.items()},
               peak_rss_gib=round(status_mb("VmHWM") / 1024, 3))  # not ru_maxrss: it carries the bench's
    print("SCALE " + json.dumps(out), flush=True)


def _measure(manifest: Path, output: Path, first_rows: bool = False, timeout: float = 3600) -> dict:
    code = f"from r2p1d_batch.bench.scale import _child; _child({str(manifest)!r}, {str(output)!r}, {first_rows})"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
           "RAY_ADDRESS": ""}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("SCALE ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"scale run failed (exit {proc.returncode}): {proc.stderr[-3000:]}")
    got = json.loads(line[len("SCALE "):])
    # a skip-all run commits a `runs` row and no data: the output's tables stay as generated
    return got


def plan_rows(sizes: tuple[int, ...] = (1_000_000, 3_000_000), repeats: int = 2, changed_fraction: float = 0.01,
              changed_rows: Optional[int] = 1_000_000, root: Path = CACHE) -> list[dict]:
    """Rows for the "scale" section: per size, a skip-all incremental rerun through pipeline.label
    (best wall of ``repeats`` fresh processes, the highest peak RSS; the 1-minute load average
    before and after each, since the machine may be shared), and with
    ``changed_rows``, a run of that many rows where ``changed_fraction`` changed (stopped at the
    first decoded rows). Inputs are built on first use (minutes for 10M) and cached in ``root``."""
    rows = []
    for n in sizes:
        fps = ensure_files(n, root)
        manifest, output = ensure_manifest(n, root), ensure_output(n, fps, root=root)
        runs = [_measure(manifest, output) for _ in range(repeats)]
        best = min(runs, key=lambda r: r["wall_s"])
        if best["videos_skipped"] != n or best["videos"]:
            raise RuntimeError(f"a skip-all rerun of {n} rows labeled something: {best}")
        rows.append({"case": "skip-all rerun", "rows": n, "wall_s": best["wall_s"],
                     "peak_rss_gib": max(r["peak_rss_gib"] for r in runs), "walls_s": [r["wall_s"] for r in runs],
                     "load": [(r["load_before"], r["load_after"]) for r in runs], "ray_started": best["ray_started"]})
    if changed_rows:
        n = changed_rows
        fps = ensure_files(n, root)
        manifest, output = ensure_manifest(n, root), ensure_output(n, fps, changed_fraction, root)
        got = _measure(manifest, output, first_rows=True)
        rows.append({"case": f"{changed_fraction:.0%} changed", "rows": n, "to_label": int(round(n * changed_fraction)),
                     "execution_start_s": got.get("execution_start_s"), "first_rows_s": got.get("first_rows_s"),
                     "peak_rss_gib": got["peak_rss_gib"], "load": [(got["load_before"], got["load_after"])],
                     "ray_started": got["ray_started"]})
    return rows
