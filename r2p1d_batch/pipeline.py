"""label(cfg): manifest -> decode/sample -> classify -> write. One direction; stages numbered.

Stage 0 (driver): manifest.py validates, commit.py sweeps leftovers, incremental.py selects.
Stage 1: one row per video.  Stage 2: decode_stage.py (CPU tasks).  Stage 3: classify_stage.py
(actor pool).  Stage 4 (driver): writer.py, committed by commit.py.
"""
from __future__ import annotations

import logging
import os
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import ray

from . import commit, incremental, sizing
from .classify_stage import ClassifierActor
from .config import Config
from .decode_stage import DecodeStage
from .faults import TEST_HOOKS_ENV, hook_target
from .manifest import read_manifest
from .model import WeightsError, kinetics_available, kinetics_checkpoint_path, weights_id
from .sampling import sampling_id
from .storage import aws_env, filesystem
from .storage import resolve as resolve_storage
from .summary import RunSummary
from .writer import RunWriter

log = logging.getLogger("r2p1d_batch")
PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


# A decode task whose worker dies is retried; faults.CRASHES_BEFORE_ERROR (< this) turns a
# video that keeps killing its decoder into an error row before the retries run out.
DECODE_MAX_RETRIES = 3
# A killed classifier actor is always restarted (max_restarts=-1); the batch it held is
# retried this many times, so a batch that kills every actor fails the run instead of looping.
CLASSIFY_MAX_TASK_RETRIES = 3


def _decode_task_args() -> dict:
    return {"max_retries": DECODE_MAX_RETRIES}


def task_pool(concurrency) -> ray.data.TaskPoolStrategy:
    size = concurrency[1] if isinstance(concurrency, tuple) else concurrency
    return ray.data.TaskPoolStrategy(size=size)


def actor_pool(concurrency) -> ray.data.ActorPoolStrategy:
    if isinstance(concurrency, tuple):
        return ray.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])
    return ray.data.ActorPoolStrategy(size=concurrency or 1)


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def check_weights(cfg: Config) -> None:
    """Fail before any work when the weights cannot possibly load."""
    spec = cfg.model.weights
    if spec == "random":
        log.warning("model.weights=random (seed %d): labels are MEANINGLESS; every row says so", cfg.model.seed)
        return
    if spec == "kinetics400":
        if not kinetics_available():
            log.info("Kinetics-400 weights not in %s: the actors will try to download them", kinetics_checkpoint_path())
        return
    fs, path = filesystem(spec, cfg.storage)
    if not fs.exists(path):
        raise WeightsError(f"checkpoint not found: {spec}")


def init_ray(cfg: Config) -> None:
    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    # A local Ray started by the job: workers must import this package from the checkout,
    # and get the driver's AWS_* variables (credentials, profile) through the runtime_env.
    # On a cluster the job's own runtime_env carries them (ray job submit --runtime-env-json).
    ray.init(
        address="local",  # a new local Ray, as documented; never a `ray start` cluster that happens to run here
        num_cpus=cfg.ray.num_cpus,
        object_store_memory=cfg.ray.object_store_memory_mb * 2**20 if cfg.ray.object_store_memory_mb else None,
        include_dashboard=False,
        runtime_env=local_runtime_env(),
    )


def local_runtime_env(env: dict | None = None) -> dict:
    env = os.environ if env is None else env
    path = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    aws = aws_env(env)
    if aws:
        log.info("passing %s to Ray workers (values not logged)", ", ".join(sorted(aws)))
    return {"env_vars": {"PYTHONPATH": path, **aws}}


def _configure_data(cfg: Config) -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = cfg.ray.progress_bars
    ctx.enable_operator_progress_bars = cfg.ray.progress_bars
    ctx.verbose_stats_logs = False


def wait_for_output(cfg: Config) -> commit.Sweep:
    """Sweep leftovers. A live lease from another host may be a driver that just died (a
    Kubernetes retry starts within seconds): wait until its heartbeat is stale_after_sec old.
    A live driver on this host is really running: no wait."""
    deadline = time.monotonic() + cfg.run.stale_after_sec + 2 * commit.HEARTBEAT_SEC
    while True:
        swept = commit.sweep(cfg.output.path, cfg.storage, cfg.run.stale_after_sec)
        if not swept.live or swept.local_live or time.monotonic() > deadline:
            return swept
        log.warning("run %s holds %s (lease from another host): waiting for it to finish or go stale",
                    swept.live[0], cfg.output.path)
        time.sleep(min(30.0, cfg.run.stale_after_sec / 4 + 1))


def plan(cfg: Config, manifest: pa.Table, weights: str) -> tuple[pa.Table, dict[str, int]]:
    """Stage 0b (driver): which manifest rows this run labels, from the committed videos rows.
    Fingerprints are fetched here (one stat/HEAD per video, no data read) so skipping costs no
    decode. Returns the rows to label and the per-decision counts."""
    ids = manifest.column("video_id").to_pylist()
    targets = [hook_target(u) for u in manifest.column("uri").to_pylist()]
    fps = incremental.fingerprints(targets, cfg.storage)
    committed = incremental.committed_videos(cfg.output.path, cfg.storage)
    decisions = incremental.select(ids, fps, weights, committed, cfg.run.mode)
    counts = {d: decisions.count(d) for d in incremental.DECISIONS}
    todo = manifest.filter(pa.array([d != incremental.SKIP for d in decisions]))
    return todo, counts


def label(cfg: Config) -> RunSummary:
    t0 = time.perf_counter()
    # Storage settings resolved here (config, else AWS env) travel to the workers inside cfg.
    cfg = cfg.model_copy(update={"storage": resolve_storage(cfg.storage)})
    # Stage 0 (driver): validate manifest and weights; a bad input stops here, nothing half-run.
    manifest = read_manifest(cfg.manifest, cfg.storage)
    check_weights(cfg)
    weights = weights_id(cfg.model.weights, cfg.model.seed, cfg.storage)
    run_id = new_run_id()

    # Stage 0a (driver): leftovers of killed runs go; a live run on this output stops us.
    swept = wait_for_output(cfg)
    if swept.live:
        raise commit.RunInProgressError(
            f"{cfg.output.path}: run {swept.live[0]} is still running (live lease in "
            f"{commit.STAGING_DIR}/run_id={swept.live[0]}/); not starting a second writer"
        )
    # Stage 0b (driver): incremental selection against the committed videos rows.
    todo, counts = plan(cfg, manifest, weights)
    log.info("run %s: %d manifest rows (%s), %d to label -> %s", run_id, manifest.num_rows,
             ", ".join(f"{k} {v}" for k, v in counts.items()), todo.num_rows, cfg.output.path)

    # Stage 0c: unset resource keys sized to the cluster (sizing.py); Ray starts only with work.
    sized: dict = {}
    if todo.num_rows:
        init_ray(cfg)
        cfg, sized = sizing.size_to_cluster(cfg, ray.cluster_resources())
        log.info("sized for %s: %s (kept: %s)", sized["cluster"], sized["chosen"] or "nothing to size",
                 ", ".join(sized["kept"]) or "none")

    writer = RunWriter(
        cfg.output.path, run_id, manifest, sampling=sampling_id(cfg.sampling), topk_n=cfg.model.topk,
        rows_per_file=cfg.output.rows_per_file, storage=cfg.storage, config=cfg.model_dump(mode="json"), started=t0,
    )
    s = writer.summary
    s.mode, s.manifest_rows, s.weights, s.sizing = cfg.run.mode, manifest.num_rows, weights, sized
    for decision, n in counts.items():  # videos_new, videos_changed, ..., videos_skipped
        setattr(s, f"videos_{decision}", n)
    try:
        if todo.num_rows:
            for batch in _labeled(cfg, todo, run_id, sized["decode_slots"], weights):
                writer.add(batch)
        return writer.commit(time.perf_counter() - t0)
    except BaseException:
        writer.abort()
        raise


def _labeled(cfg: Config, todo: pa.Table, run_id: str, decode_slots: int = 1, weights: str | None = None):
    init_ray(cfg)
    _configure_data(cfg)

    # Stage 1: one row per video, spread over blocks so decode tasks run in parallel: a few
    # videos per block (one Ray task each), enough blocks per decode slot (sizing.decode_blocks).
    rows = todo.select(["video_id", "uri", "start_sec", "end_sec"]).to_pylist()
    ds = ray.data.from_items(rows, override_num_blocks=sizing.decode_blocks(len(rows), decode_slots))

    # Stage 2: decode + clip sampling (1:N, one video in, N clip rows + 1 video row out; CPU tasks).
    # A crashed decode worker is retried a bounded number of times. Passing the args through
    # ray_remote_args_fn also keeps Ray from fusing decode into the classifier actors
    # (fused, each actor would decode its own input serially and the pools could not scale apart).
    # Fault-injection hooks reach the decode workers only when the driver runs a test.
    hooks = {"env_vars": {TEST_HOOKS_ENV: "1"}} if os.environ.get(TEST_HOOKS_ENV) == "1" else None
    ds = ds.map_batches(
        DecodeStage(cfg, run_id),
        runtime_env=hooks,
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=cfg.decode.num_cpus,
        compute=task_pool(cfg.decode.concurrency),
        ray_remote_args_fn=_decode_task_args,
    )

    # Stage 3: classify (N:N; actor pool, GPU or CPU). Pixels stop here; scores go on.
    # A SIGKILLed actor is replaced and its batch retried (Ray Data's defaults, made explicit).
    ds = ds.map_batches(
        ClassifierActor,
        fn_constructor_kwargs={"cfg": cfg, "weights_id": weights},  # the model loads on a thread
        batch_size=cfg.model.effective_batch_size,
        batch_format="pyarrow",
        num_cpus=cfg.model.num_cpus,
        num_gpus=cfg.model.num_gpus or None,
        compute=actor_pool(cfg.model.concurrency),
        zero_copy_batch=True,
        max_restarts=-1,
        max_task_retries=CLASSIFY_MAX_TASK_RETRIES,
    )

    # Stage 4 (driver): the caller streams labeled rows into the run's staging files, then commits.
    # prefetch_batches=0: with Ray's default (1) each block reached us only when the next one was
    # done (the last two together), which held rows back and skewed RunSummary.first_clip_sec;
    # the blocks are labels only, so prefetching bought nothing (same wall time, measured).
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0)
