"""Per-video overhead: N manifest rows whose files do not exist (every row an error row: no
decode, no model), through pipeline.label and through a bare Ray Data pipeline of the same shape
(from_items -> a map_batches task stage that stats each row's file -> a one-actor pool ->
iter_batches on the driver). Both on the same warm local Ray, interleaved, best of N; start-up
(Ray Data planning, task workers, the actor's construction) counted on both sides.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .. import config as config_mod


def missing_manifest(n: int, path: Path) -> Path:
    """A manifest of ``n`` rows whose files do not exist (every row must become an error row)."""
    root = path.parent / "absent"
    uris = [str(root / f"clip{i:06d}.mp4") for i in range(n)]
    pq.write_table(pa.table({"video_id": [f"m{i:06d}" for i in range(n)], "uri": uris}), path)
    return path


def _stat_rows(batch: pa.Table) -> pa.Table:
    """The bare pipeline's task: stat each row's file, one status per row."""
    status = []
    for uri in batch.column("uri").to_pylist():
        try:
            os.stat(uri)
            status.append("ok")
        except OSError:
            status.append("error")
    return batch.append_column("status", pa.array(status, pa.string()))


class _PassThrough:
    """The bare pipeline's actor: rows in, rows out."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        return batch


def bare_pipeline(manifest: Path, batch_size: int, task_cpus: float = 1.0, actor_cpus: float = 1.0) -> int:
    """Rows out of the bare Ray Data pipeline of the job's shape (Ray Data's default blocks).
    With equal CPUs (the issue's setup) Ray Data fuses the task stage into the actor: one
    operator, no tasks; the job's sized CPUs (decode 0.25, classifier 1.5 on 2 cores) keep
    the two operators apart, as the job's are."""
    import ray

    rows = pq.read_table(manifest).select(["video_id", "uri"]).to_pylist()
    ds = ray.data.from_items(rows)
    ds = ds.map_batches(_stat_rows, batch_size=1, batch_format="pyarrow", num_cpus=task_cpus)
    ds = ds.map_batches(_PassThrough, batch_size=batch_size, batch_format="pyarrow", num_cpus=actor_cpus,
                        compute=ray.data.ActorPoolStrategy(size=1))
    return sum(b.num_rows for b in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0))


FUSED = "bare Ray Data, as Ray fuses it (stat task + 1 actor as one operator; 1 CPU each)"
TWO_OPS = "bare Ray Data, two operators (stat task 0.25 CPU -> 1 actor 1.5 CPU, the job's sizes)"


def overhead_rows(n: int, repeats: int, overrides: list[str]) -> tuple[list[dict], list[str]]:
    import ray

    from ..pipeline import init_ray, label

    best: dict[str, float] = {}

    def timed(name: str, fn):
        t = time.perf_counter()
        out = fn()
        best[name] = min(best.get(name, 1e9), time.perf_counter() - t)
        return out

    with tempfile.TemporaryDirectory(prefix="r2p1d-overhead-") as tmp:
        manifest = missing_manifest(n, Path(tmp) / "manifest.parquet")
        base = ["ray.progress_bars=false", *overrides]
        cfg = config_mod.load(None, base, manifest=str(manifest), **{"output.path": str(Path(tmp) / "out")})
        started = not ray.is_initialized()
        init_ray(cfg)  # a warm cluster, as with `ray job submit`
        ray.data.DataContext.get_current().enable_progress_bars = False
        errors, batch = None, cfg.model.effective_batch_size
        for r in range(repeats):  # interleaved: every side sees the same load
            run_cfg = config_mod.load(None, [*base, "run.mode=force"], manifest=str(manifest),
                                      **{"output.path": str(Path(tmp) / f"out{r}")})
            s = timed("pipeline", lambda c=run_cfg: label(c))
            assert s.committed and s.videos == n and s.videos_error == n, s.text()
            errors, sized = s.errors_by_class, s.sizing
            chosen = sized.get("chosen") or {}
            task_cpus, actor_cpus = chosen.get("decode.num_cpus", 0.25), chosen.get("model.num_cpus", 1.5)
            for name, cpus in ((FUSED, (1.0, 1.0)), (TWO_OPS, (task_cpus, actor_cpus))):
                got = timed(name, lambda c=cpus: bare_pipeline(manifest, batch, *c))
                assert got == n, f"bare pipeline returned {got} of {n} rows"
        if started:
            ray.shutdown()
    rows = [{"what": name, "rows": n, "seconds": best[name], "rows_per_s": n / best[name]} for name in (FUSED, TWO_OPS)]
    rows.append({"what": "pipeline.label (every row an error row)", "rows": n, "seconds": best["pipeline"],
                 "rows_per_s": n / best["pipeline"], "vs_fused": best[FUSED] / best["pipeline"],
                 "vs_two_operators": best[TWO_OPS] / best["pipeline"]})
    notes = [f"{n} manifest rows whose files do not exist; errors: {errors}; overrides: {' '.join(overrides)}; "
             f"sized: {sized.get('chosen')}, {sized.get('decode_slots')} decode slot(s)",
             f"best of {repeats}, all three interleaved on one warm local Ray; start-up counted on every side "
             "(planning, task workers, actor construction: the job's classifier actor builds its model)",
             "the job cannot fuse: its decode tasks and classifier actor need different resources (and, on a "
             "cluster, different nodes); the two-operator bare pipeline is its shape"]
    return rows, notes
