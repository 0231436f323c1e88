"""label(cfg): manifest -> decode/sample -> classify -> write. One direction; stages numbered.

Stage 0 (driver): manifest.py validates, commit.py sweeps leftovers, incremental.py selects.
Stage 1: one row per video.  Stage 2: decoding/stage.py (CPU tasks).  Stage 3:
classifying/stage.py (actor pool).  Stage 4: runs/clip_writer.py (CPU tasks write the clips).
Stage 5 (driver): runs/writer.py finishes videos from the writers' reports; runs/commit.py commits.
"""
from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import ray
from ray.data.exceptions import ExecutionTimeoutError

from .classifying import int8
from .classifying.stage import ClassifierActor
from .classifying.weights import WeightsError, kinetics_available, kinetics_checkpoint_path, weights_id
from .config import Config
from .decoding.faults import TEST_HOOKS_ENV, hook_target
from .decoding.lanes import NvdecDecodeStage
from .decoding.lanes import decode_device as decode_device_for
from .decoding.sampling import sampling_id
from .decoding.stage import DecodeStage
from .errors import ServiceError
from .planning import sizing
from .planning.manifest import Manifest, read_manifest
from .planning.placement import (
    actor_pool,
    check_stages,
    classifier_bundle,
    classifier_hosts,
    largest_classifier_node_cpus,
    stage_args,
    task_pool,
    writer_args,
)
from .planning.sizing import writer_tasks
from .planning.todo import CPU_LANE, NVDEC_LANE, Todo
from .runs import commit, fingerprints, incremental
from .runs.clip_writer import ClipWriter, batch_rows
from .runs.summary import RunSummary
from .runs.writer import RunWriter
from .storage import aws_env, filesystem
from .storage import with_env as storage_with_env

log = logging.getLogger("r2p1d_batch")
PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


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


def check_int8(cfg: Config, weights: str) -> dict | None:
    """model.int8: the graph's report when this run may use it (classifying/int8.check: the
    report exists, met its budget, names these weights and this graph), else Int8Error (exit 2)
    before any work. None without model.int8."""
    if not cfg.model.int8:
        return None
    m = cfg.model
    if m.num_gpus > 0 or m.device == "cuda" or m.runtime == "torch":
        raise int8.Int8Error(f"model.int8={m.int8} runs on CPU actors with onnxruntime, not with "
                             f"model.num_gpus={m.num_gpus:g}, device={m.device}, runtime={m.runtime}: "
                             f"unset model.int8 on GPU classifiers")
    report = int8.check(m.int8, weights, cfg.storage)
    if report.get("random_weights"):
        log.warning("model.int8=%s: %s", m.int8, int8.RANDOM_NOTE)
    return report


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
    # The bound on recovering from lost nodes (placement.py): Ray retries and restarts without a
    # count, and Ray Data fails the execution once no operator has moved for this long.
    ctx.execution_no_progress_timeout_s = cfg.run.stall_timeout_sec or -1


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


def plan(cfg: Config, manifest: Manifest, weights: str) -> Todo:
    """Stage 0b (driver): which manifest rows this run labels, from the committed videos rows,
    over columns (no Python object per row). Fingerprints come from listings, not a request per
    video (runs/fingerprints.py: a stat per local file, a LIST per 1,000 S3 keys, nothing for
    URLs outside storage.allowed_protocols), so skipping costs no decode; each is folded into a
    16-byte key as it arrives and the decisions are incremental.decide_keys'. Returns the Todo: a
    mask over the manifest and the per-decision counts."""
    hooked = os.environ.get(TEST_HOOKS_ENV) == "1"  # a test's hooked URIs stand for their target files
    targets = ((i, pa.array([hook_target(u) for u in uris.to_pylist()], pa.string()) if hooked else uris)
               for i, uris in manifest.uri_batches())
    keys = incremental.Keys(manifest.num_rows)
    try:
        for rows, fps in fingerprints.fingerprint_pieces(targets, cfg.storage):
            keys.add(rows, manifest.ids(rows), fps)
        codes = incremental.decide_keys(keys, manifest.video_id, weights, cfg.output.path, cfg.storage, cfg.run.mode)
    finally:
        keys.close()
    return Todo(manifest, codes != incremental.CODE[incremental.SKIP], incremental.counts(codes),
                incremental.replaced(codes, manifest.video_id))


def classifier_args(cfg: Config, weights_id: str | None, runtime: str | None = None) -> dict:
    """What a classifier actor is constructed from, and rebuilt from when Ray restarts it (a lost
    node, a killed process): the frozen config and the weights id, a few KiB, no ObjectRef and no
    model. The actor loads the weights and the ONNX graph itself (``model.weights``, the export
    cache), so a restart depends on nothing the driver holds. Ray Data wraps these in its own
    MapTransformer and DataContext, which it ``ray.put``s once per operator and keeps referenced
    for the whole execution: that, not these arguments, is what Ray's "constructor arguments in
    the object store" line at the pool's start is about (docs/runs.md, "Faults inside a run")."""
    return {"cfg": cfg, "weights_id": weights_id, "runtime": runtime}


def label(cfg: Config) -> RunSummary:
    t0 = time.perf_counter()
    # Storage settings resolved here (config, else AWS env) travel to the workers inside cfg.
    cfg = cfg.model_copy(update={"storage": storage_with_env(cfg.storage)})
    # Stage 0 (driver): validate manifest and weights; a bad input stops here, nothing half-run.
    manifest = read_manifest(cfg.manifest, cfg.storage)
    check_weights(cfg)
    weights = weights_id(cfg.model.weights, cfg.model.seed, cfg.storage)
    int8_report = check_int8(cfg, weights)
    run_id = new_run_id()

    # Stage 0a (driver): committed runs a killed driver left half-applied are rolled forward,
    # leftovers of killed runs go; a live run on this output stops us.
    commit.check_writable(cfg.output.path, cfg.storage)
    swept = wait_for_output(cfg)
    if swept.live:
        raise commit.RunInProgressError(
            f"{cfg.output.path}: run {swept.live[0]} is still running (live lease in "
            f"{commit.STAGING_DIR}/run_id={swept.live[0]}/); not starting a second writer"
        )
    # Stage 0b (driver): incremental selection against the committed videos rows.
    todo = plan(cfg, manifest, weights)
    counts = todo.counts
    log.info("run %s: %d manifest rows (%s), %d to label -> %s", run_id, manifest.num_rows,
             ", ".join(f"{k} {v}" for k, v in counts.items()), todo.num_rows, cfg.output.path)

    # Stage 0c: unset resource keys sized to the cluster (sizing.py); Ray starts only with work.
    sized: dict = {}
    if todo.num_rows:
        init_ray(cfg)
        cfg, sized = sizing.size_to_cluster(cfg, ray.cluster_resources(), largest_classifier_node_cpus(cfg))
        log.info("sized for %s: %s (kept: %s)", sized["cluster"], sized["chosen"] or "nothing to size",
                 ", ".join(sized["kept"]) or "none")

    writer = RunWriter(
        cfg.output.path, run_id, todo.writer_rows(), sampling=sampling_id(cfg.sampling), topk_n=cfg.model.topk,
        rows_per_file=cfg.output.rows_per_file, storage=cfg.storage, config=cfg.model_dump(mode="json"),
        started=time.time() - (time.perf_counter() - t0),  # the run's start, epoch (the classifier's clock)
    )
    s = writer.summary
    s.mode, s.manifest_rows, s.weights, s.sizing = cfg.run.mode, manifest.num_rows, weights, sized
    for decision, n in counts.items():  # videos_new, videos_changed, ..., videos_skipped
        setattr(s, f"videos_{decision}", n)
    runtime = None
    if int8_report is not None:
        runtime = s.runtime = int8.runtime_id(int8_report)
        s.int8 = int8.summary(cfg.model.int8, int8_report)
    try:
        if todo.num_rows:
            reports = _labeled(cfg, todo, run_id, s, sized["decode_slots"], weights, runtime,
                               clip_writer=writer.clip_writer())
            for report in reports:
                writer.add(report)
        summary = writer.commit(time.perf_counter() - t0, todo.replaced, map_files=on_cluster)
    except ExecutionTimeoutError as e:
        writer.abort()
        raise RunStalledError(_stalled_message(cfg, run_id)) from e
    except BaseException:
        writer.abort()
        raise
    if cfg.output.maintain.after_label:
        summary.maintenance = maintain_after(cfg)
    return summary


def maintain_after(cfg: Config) -> dict:
    """output.maintain.after_label: the committed run's output maintained (runs/maintain.py). A
    failure here leaves the run committed; it is logged and reported, not raised."""
    from .runs.maintain import maintain

    try:
        done = maintain(cfg.output.path, cfg.storage, cfg.output.maintain, rows_per_file=cfg.output.rows_per_file,
                        stale_after_sec=cfg.run.stale_after_sec)
        return asdict(done)
    except Exception as e:
        log.error("the run is committed, but maintaining %s failed: %s", cfg.output.path, e)
        return {"error": f"{type(e).__name__}: {e}"}


def on_cluster(fn, args: list[tuple]) -> list:
    """commit.MapFiles on Ray: one task per call (the copy-on-write of the files that hold a
    relabeled video's earlier rows), Arrow arguments put in the object store once. Without Ray
    (nothing was labeled), threads here."""
    if not ray.is_initialized():
        return commit.threads(fn, args)
    remote = ray.remote(num_cpus=sizing.WRITER_CPUS)(fn)
    shared: dict[int, ray.ObjectRef] = {}
    refs = [remote.remote(*(shared.setdefault(id(a), ray.put(a)) if isinstance(a, pa.Array) else a for a in call))
            for call in args]
    return ray.get(refs)


class RunStalledError(ServiceError, RuntimeError):
    """Nothing moved for run.stall_timeout_sec (e.g. no node left that can take the classifier):
    the cluster failed the run, not its input, so `r2p1d label` exits 3."""


def _stalled_message(cfg: Config, run_id: str) -> str:
    need = ", ".join(f"{k}={v:g}" for k, v in classifier_bundle(cfg).items())
    labels = f" on a node labeled {cfg.model.label_selector}" if cfg.model.label_selector else ""
    try:
        hosts = classifier_hosts(cfg)
        now = f"{len(hosts)} alive node(s) could host one now" if hosts else "no alive node can host one now"
    except Exception:  # the message must not fail on a broken cluster
        now = "the cluster could not be asked which nodes could host one"
    return (f"run {run_id}: no progress for {cfg.run.stall_timeout_sec:g} s (run.stall_timeout_sec). "
            f"A classifier actor needs {need}{labels}; {now}. Lost nodes (spot preemption) are "
            f"waited for up to that long; nothing was committed, the next run labels these videos.")


def _labeled(cfg: Config, todo: Todo, run_id: str, summary: RunSummary | None = None,
             decode_slots: int = 1, weights: str | None = None, runtime: str | None = None, *,
             clip_writer: ClipWriter):
    init_ray(cfg)
    _configure_data(cfg)
    # decode.device against this cluster: cpu (PyAV only, the pipeline below unchanged) or cuda
    # (an NVDEC lane beside it, decode_lanes.py). `cuda` without a usable GPU stops here (exit 2).
    decode_device = decode_device_for(cfg)
    if summary is not None:
        summary.decode_device = decode_device

    # Stage 1: one row per video, spread over blocks so decode tasks run in parallel: a few
    # videos per block (one Ray task each), enough blocks per decode slot (sizing.decode_blocks).
    # Arrow blocks cut from the manifest's files as the driver streams them (planning/todo.py),
    # extras included; with the NVDEC lane on, every 1/share-th row goes to that lane instead.
    lanes = todo_datasets(todo, sizing.decode_blocks(todo.num_rows, decode_slots),
                          cfg.decode.nvdec.share if decode_device == "cuda" else None)
    ds = lanes[CPU_LANE]

    # Where stages 2 and 3 may run, how Ray retries them (a lost node included) and what keeps
    # them apart: placement.py. Test hooks reach decode workers only when a test drives us.
    decode, classify = stage_args(cfg, test_hooks=os.environ.get(TEST_HOOKS_ENV) == "1")

    # Stage 2: decode + clip sampling (1:N, one video in, N clip rows + 1 video row out; CPU tasks).
    ds = ds.map_batches(
        DecodeStage(cfg, run_id),
        batch_size=1,
        batch_format="pyarrow",
        compute=task_pool(cfg.decode.concurrency),
        **decode,
    )
    # Stage 2b (decode.device resolved to cuda): the NVDEC lane, decode actors with a GPU fraction
    # each (1:N like stage 2; NOT YET RUN ON A GPU), merged with the CPU lane before the classifier.
    if NVDEC_LANE in lanes:
        ds = ds.union(nvdec_lane(lanes[NVDEC_LANE], cfg, run_id, decode["runtime_env"]))

    # Stage 3: classify (N:N; actor pool, GPU or CPU). Pixels stop here; scores go on.
    ds = ds.map_batches(
        ClassifierActor,
        fn_constructor_kwargs=classifier_args(cfg, weights, runtime),  # the model loads on a thread
        batch_size=cfg.model.effective_batch_size,
        batch_format="pyarrow",
        compute=actor_pool(cfg.model.concurrency),
        zero_copy_batch=True,
        **classify,
    )

    # Stage 4: write (N:1 per part file; CPU tasks of sizing.WRITER_CPUS, runs/clip_writer.py). Each
    # task writes its batch's clips as one part file into the run's staging and returns a report:
    # per video its clip count, clip indices and softmax sum, the video rows, the file's name.
    ds = ds.map_batches(
        clip_writer,
        batch_size=batch_rows(cfg.output.rows_per_file, ray.cluster_resources().get("object_store_memory")),
        batch_format="pyarrow",
        compute=task_pool(writer_tasks(cfg)),
        zero_copy_batch=True,
        **writer_args(cfg, test_hooks=os.environ.get(TEST_HOOKS_ENV) == "1"),
    )
    check_stages(ds)  # the plan Ray will execute: decode tasks -> classifier actors -> writer tasks, not fused

    # Stage 5 (driver): the caller finishes videos from the reports, writes `videos`, commits.
    # prefetch_batches=0: with Ray's default (1) each block reached us only when the next one was
    # done (the last two together), which held reports back; they are small, so prefetching buys
    # nothing.
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0)


def todo_datasets(todo: Todo, blocks: int, nvdec_share: float | None = None) -> dict[str, ray.data.Dataset]:
    """Stage 1's datasets, one per decode lane that has rows (CPU_LANE always), holding exactly
    the blocks Todo.blocks cuts. This is ray.data.from_blocks, streamed: each block goes to the
    object store as soon as it is cut, with its metadata computed here (no task per block), so
    the driver holds one block at a time. (from_arrow_refs would run a task per block for its
    metadata; read_parquet of staged files adds listing and read tasks that need CPUs the
    classifier may hold.) Ray internals, pinned by requirements.lock, as in placement.py."""
    from ray.data._internal.logical.interfaces import LogicalPlan
    from ray.data._internal.logical.operators import FromBlocks
    from ray.data._internal.stats import DatasetStats
    from ray.data.block import BlockMetadataWithSchema
    from ray.data.dataset import MaterializedDataset

    refs: dict[str, list] = {CPU_LANE: [], NVDEC_LANE: []}
    metas: dict[str, list] = {CPU_LANE: [], NVDEC_LANE: []}
    for lane, block in todo.blocks(blocks, nvdec_share):
        refs[lane].append(ray.put(block))
        metas[lane].append(BlockMetadataWithSchema.from_block(block))
    out = {}
    for lane in refs:
        if lane != CPU_LANE and not refs[lane]:
            continue
        if not refs[lane]:  # every row went to NVDEC: one empty block with the rows' schema
            empty = todo.manifest.schema.empty_table()
            refs[lane], metas[lane] = [ray.put(empty)], [BlockMetadataWithSchema.from_block(empty)]
        stats = DatasetStats(metadata={"FromBlocks": metas[lane]}, parent=None)
        context = ray.data.DataContext.get_current().copy()
        out[lane] = MaterializedDataset(LogicalPlan(FromBlocks(refs[lane], metas[lane]), context), context, stats)
    return out


def nvdec_lane(ds: ray.data.Dataset, cfg: Config, run_id: str, runtime_env: dict | None) -> ray.data.Dataset:
    """The NVDEC lane's stage on ``ds`` (manifest rows): an actor pool with a GPU fraction each."""
    n = cfg.decode.nvdec
    return ds.map_batches(
        NvdecDecodeStage,
        fn_constructor_args=(cfg, run_id),
        runtime_env=runtime_env,
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=n.num_cpus,
        num_gpus=n.num_gpus,
        compute=actor_pool(n.concurrency),  # Ray's own retry defaults, as for the other stages (planning/placement.py)
    )
