"""Node loss on a real multi-node Ray (ray.cluster_utils.Cluster: one head with no CPUs, 1-CPU
worker nodes, all on this machine), as a spot preemption does it: a node's raylet and workers
are SIGKILLed mid-run, and a fresh node may join a moment later.

"GPU" nodes here are nodes labeled r2p1d.io/pool=gpu (torch sees no GPU in CI); decode nodes
are labeled r2p1d.io/pool=decode, and the run's config keeps each stage on its own pool, the
way configs/cluster.yaml does on a real cluster. Every run is checked against a direct decode
of the same files and a clean run: same clips (clip_sha), same labels, no duplicate
(video_id, clip_index), every video ok. Figures (recovery time) are printed with -s.
"""
from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r2p1d_batch import config as config_mod
from r2p1d_batch.classifying.stage import ClassifierActor
from r2p1d_batch.decoding.faults import TEST_HOOKS_ENV
from r2p1d_batch.decoding.stage import DecodeStage
from r2p1d_batch.planning.placement import (
    FusedStagesError,
    check_stages,
    physical_operators,
    stage_args,
    task_pool,
    writer_args,
)
from r2p1d_batch.planning.sizing import writer_tasks
from r2p1d_batch.runs import commit
from r2p1d_batch.runs.clip_writer import ClipWriter, batch_rows

from tests.helpers import REPO as ROOT
from tests.helpers.local_ray import KEEP_IDLE_WORKERS, init_local_ray
from tests.helpers.outputs import committed, expected_clips
from tests.helpers.videos import make_video

pytestmark = [pytest.mark.ray, pytest.mark.slow]  # every test needs the cluster (~15 s to start)
POOL = "r2p1d.io/pool"
NODE = dict(num_cpus=1, object_store_memory=80 * 2**20)
PLACED = [f'decode.label_selector={{"{POOL}": "decode"}}', f'model.label_selector={{"{POOL}": "gpu"}}']
BASE = ["model.weights=random", "ray.progress_bars=false", *PLACED]
CLASSIFY_TASK = "MapWorker(MapBatches(ClassifierActor)).submit"
# Ray's GCS declares a node dead after health_check_failure_threshold failed checks that are
# health_check_period_ms apart: 5 x 3 s by default, 5 x 1 s here, so a killed node is noticed in
# ~5 s instead of ~15 s. A check of a node that is alive but slow fails only when its raylet does
# not answer within health_check_timeout_ms (10 s, unchanged): a loaded machine loses no node.
NODE_DEATH = {"health_check_period_ms": 1000, "health_check_failure_threshold": 5}


@pytest.fixture(scope="module")
def cluster(ray_local):
    """Head (0 CPUs: driver and control plane only), a decode node, two GPU-pool nodes. It takes
    the place of the session's Ray (ray_local: shut down here, started again at the end), so these
    tests run where the session's Ray tests run (tests/helpers/markers.py)."""
    from ray.cluster_utils import Cluster

    ray = ray_local
    ray.shutdown()
    old = os.environ.get(TEST_HOOKS_ENV)
    os.environ[TEST_HOOKS_ENV] = "1"
    # The state API (list_actors, list_tasks) goes through the head's dashboard: give it a free
    # port, since other Ray instances on this machine may hold the default 8265.
    c = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=0, object_store_memory=80 * 2**20, include_dashboard=True, dashboard_port=free_port(),
        _system_config={**NODE_DEATH, **KEEP_IDLE_WORKERS}))
    try:
        c.decode = [add_node(c, "decode")]
        c.gpu = [add_node(c, "gpu") for _ in range(2)]
        ray.init(address=c.address, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}}, log_to_driver=False)
        STATE["address"] = "http://" + c.head_node.webui_url
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
        init_local_ray()
        if old is None:
            os.environ.pop(TEST_HOOKS_ENV, None)
        else:
            os.environ[TEST_HOOKS_ENV] = old


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    # 3 s at 15 fps: 3 dense clips each
    return {f"v{i}": make_video(d / f"v{i}.mp4", n_frames=45, fps=15, size=(64, 48), seed=i) for i in range(4)}


def add_node(c, pool: str):
    """A 1-CPU node of ``pool``. Ray gives a raylet 30 s to register, which a CI machine under
    load can miss: one more try then (the failed node's processes end with the cluster's atexit)."""
    try:
        return c.add_node(**NODE, labels={POOL: pool})
    except Exception as e:
        if "timed out during startup" not in str(e):
            raise
        return c.add_node(**NODE, labels={POOL: pool})


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STATE = {}  # the state API's address: this cluster's dashboard


def node_id(node) -> str:
    return node.node_id


def write_manifest(path: Path, rows: dict[str, str]) -> str:
    pq.write_table(pa.table({"video_id": list(rows), "uri": list(rows.values())}), path)
    return str(path)


def cfg_for(manifest: str, out: Path, *sets: str):
    return config_mod.load(None, [*BASE, *sets], manifest=manifest, **{"output.path": str(out)})


def labels(out: Path) -> list[tuple]:
    return sorted((c["video_id"], c["clip_index"], c["clip_sha"], c["label"], round(c["score"], 4))
                  for c in committed(out, "clips"))


def assert_equals_clean(out: Path, clean: Path, videos: dict) -> None:
    clips = committed(out, "clips")
    keys = [(c["video_id"], c["clip_index"]) for c in clips]
    assert len(keys) == len(set(keys)), "a clip was written twice"
    assert sorted((c["video_id"], c["clip_index"], c["clip_sha"]) for c in clips) == expected_clips(videos)
    assert labels(out) == labels(clean)
    vids = {v["video_id"]: (v["status"], v["num_clips"]) for v in committed(out, "videos")}
    assert vids == {v["video_id"]: (v["status"], v["num_clips"]) for v in committed(clean, "videos")}
    assert all(status == "ok" for status, _ in vids.values()), vids
    assert len(commit.committed_run_ids(str(out))) == 1
    assert not (out / commit.STAGING_DIR).exists() or not any((out / commit.STAGING_DIR).iterdir())


RUNS: list = []


@pytest.fixture(autouse=True)
def _no_run_outlives_its_test():
    yield
    while RUNS:  # a failed test must not leave its run going into the next one
        RUNS.pop().join(300)


class Run(threading.Thread):
    """pipeline.run in a thread: Cluster.add_node must be called from the main thread."""

    def __init__(self, cfg):
        super().__init__(daemon=True)
        self.cfg, self.summary, self.error, self.wall = cfg, None, None, None
        self.actors_before = {a.actor_id for a in classifier_actors(None)}
        RUNS.append(self)

    def run(self):
        from r2p1d_batch.pipeline import label as run

        t0 = time.monotonic()
        try:
            self.summary = run(self.cfg)
        except BaseException as e:  # reported to the test
            self.error = e
        self.wall = time.monotonic() - t0


def classifier_actors(state: str | None = "ALIVE") -> list:
    from ray.util.state import list_actors

    filters = [("state", "=", state)] if state else None
    return [a for a in list_actors(address=STATE["address"], filters=filters, limit=1000, detail=True)
            if "ClassifierActor" in (a.class_name or "") or "MapWorker" in (a.class_name or "")]


def classify_tasks_finished(actor_id: str) -> int:
    from ray.util.state import list_tasks

    return len(list_tasks(address=STATE["address"], limit=10000, filters=[
        ("name", "=", CLASSIFY_TASK), ("state", "=", "FINISHED"), ("actor_id", "=", actor_id)]))


def decode_tasks(state: str | None = None) -> list:
    """This session's decode tasks (named after their operator in Ray's state API)."""
    from ray.util.state import list_tasks

    filters = [("name", "=", "MapBatches(DecodeStage)")] + ([("state", "=", state)] if state else [])
    return list_tasks(address=STATE["address"], filters=filters, limit=10000)


def wait_until(cond, timeout: float, what: str, run: Run | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run is not None and not run.is_alive():
            raise AssertionError(f"the run ended before {what}: {run.error or run.summary}")
        got = cond()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def node_of(actor_or_task) -> str:
    return actor_or_task.node_id


# -- the plan Ray will execute -------------------------------------------------------------------
def _writer_stage(ds, cfg):
    """The writer stage as the pipeline adds it (runs/clip_writer.py)."""
    clip_writer = ClipWriter("unused", run_id="r", model="m", sampling="s", created_at=datetime.now(timezone.utc),
                             labels=np.array(["a"], dtype=object), topk_n=1)
    return ds.map_batches(clip_writer, batch_size=batch_rows(cfg.output.rows_per_file),
                          batch_format="pyarrow", compute=task_pool(writer_tasks(cfg)), **writer_args(cfg))


def test_decode_classify_and_write_stay_three_operators_for_every_profile(cluster, tmp_path):
    """The optimized physical plan has decode as a task operator feeding the classifier's actor
    operator, feeding the writer's task operator, for the default, CPU and cluster profiles,
    without any deprecated argument; and the check fails on the plan Ray builds when the decode
    and classify stages' arguments are equal (it fuses)."""
    import warnings

    import ray
    from ray.util.annotations import RayDeprecationWarning

    rows = [{"video_id": "a", "uri": "x", "start_sec": None, "end_sec": None}]
    for profile in (None, ROOT / "configs" / "cpu.yaml", ROOT / "configs" / "cluster.yaml"):
        cfg = config_mod.load(profile, ["model.weights=random"], manifest="m")
        decode, classify = stage_args(cfg)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RayDeprecationWarning)  # a deprecated argument fails here
            ds = ray.data.from_items(rows).map_batches(
                DecodeStage(cfg), batch_size=1, batch_format="pyarrow", **decode
            ).map_batches(ClassifierActor, fn_constructor_kwargs={"cfg": cfg}, batch_format="pyarrow",
                          batch_size=cfg.model.effective_batch_size,
                          compute=ray.data.ActorPoolStrategy(size=1), **classify)
            ds = _writer_stage(ds, cfg)
        ops = check_stages(ds)
        assert ops[0] == "TaskPoolMapOperator[MapBatches(ClipWriter)]", (profile, ops)
        assert ops[1] == "ActorPoolMapOperator[MapBatches(ClassifierActor)]", (profile, ops)
        assert ops[2] == "TaskPoolMapOperator[MapBatches(DecodeStage)]", (profile, ops)

    cfg = config_mod.load(None, ["model.weights=random"], manifest="m")
    fused = ray.data.from_items(rows).map_batches(DecodeStage(cfg), batch_size=1, num_cpus=1).map_batches(
        ClassifierActor, fn_constructor_kwargs={"cfg": cfg}, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)
    fused = _writer_stage(fused, cfg)
    assert any("DecodeStage" in op and "ClassifierActor" in op for op in physical_operators(fused))
    with pytest.raises(FusedStagesError, match="three operators"):
        check_stages(fused)


# -- a clean run: where each stage ran, and the actor pool growing under load ---------------------
@pytest.fixture(scope="module")
def clean(cluster, videos, tmp_path_factory):
    """The reference run: every stage on its pool, the classifier pool [1, 2] over two GPU nodes.
    Afterwards one GPU node leaves (gracefully), so the fault tests start with one classifier node."""
    from ray.util.state import list_tasks

    out = tmp_path_factory.mktemp("clean") / "out"
    manifest = write_manifest(out.parent / "m.parquet", {v: str(p) for v, p in videos.items()})
    # One clip per block and per batch: every clip is one classifier task, so the pool sees a queue
    # and grows.
    run = Run(cfg_for(manifest, out, "model.concurrency=[1, 2]", "model.batch_size=1", "decode.clips_per_block=1"))
    seen, t0 = [], time.monotonic()
    run.start()
    while run.is_alive():  # (seconds, actors requested (not DEAD), actors ALIVE)
        actors = classifier_actors(None)
        seen.append((round(time.monotonic() - t0, 1), sum(a.state != "DEAD" for a in actors),
                     sum(a.state == "ALIVE" for a in actors)))
        time.sleep(1.0)
    assert run.error is None, run.error
    decode_nodes = {t.node_id for t in decode_tasks()}
    classify_tasks = list_tasks(address=STATE["address"], filters=[("name", "=", CLASSIFY_TASK)], limit=10000)
    classify_nodes = {t.node_id for t in classify_tasks}
    print(f"\nclean run: {run.wall:.1f} s; classifier actors alive over time {seen}")
    cluster.remove_node(cluster.gpu.pop())
    return dict(out=out, summary=run.summary, seen=seen, decode_nodes=decode_nodes, classify_nodes=classify_nodes)


def test_each_stage_runs_on_its_own_pool(cluster, clean, videos):
    s = clean["summary"]
    assert s.committed and s.videos_ok == len(videos)
    decode_pool = {node_id(n) for n in cluster.decode}
    head = node_id(cluster.head_node)
    assert clean["decode_nodes"] and clean["decode_nodes"] <= decode_pool, clean["decode_nodes"]
    assert clean["classify_nodes"] and not clean["classify_nodes"] & (decode_pool | {head}), clean["classify_nodes"]
    assert_equals_clean(clean["out"], clean["out"], videos)


def test_classifier_pool_grows_under_load(clean):
    """model.concurrency [1, 2]: the pool starts with one actor and adds the second while clips
    queue (counted through Ray's state API: actors of the classifier operator not DEAD, and ALIVE)."""
    requested = [n for _, n, _ in clean["seen"]]
    alive = [n for _, _, n in clean["seen"]]
    first = next(i for i, n in enumerate(requested) if n)
    assert requested[first] == 1, clean["seen"]
    assert max(requested) == 2 and requested.index(2) > first, clean["seen"]  # grown during the run
    assert requested.index(2) >= alive.index(1), clean["seen"]  # once the first actor was working
    grown_at = clean["seen"][requested.index(2)][0]
    print(f"\nclassifier pool: 1 actor at {clean['seen'][first][0]} s, 2 from {grown_at} s; "
          f"most alive at once: {max(alive)}")


# -- node loss ------------------------------------------------------------------------------------
def _slow_manifest(tmp_path: Path, videos: dict, per_clip: float = 0.5) -> str:
    return write_manifest(tmp_path / "m.parquet", {v: f"testhook:slow={per_clip}:{p}" for v, p in videos.items()})


# One clip per block and per classifier batch: many small classifier tasks, so there is always
# work left when the first one has finished (the moment the tests take a node away).
SMALL = ("model.batch_size=1", "decode.clips_per_block=1")


def _kill_classifier_node(cluster, run: Run) -> tuple[float, str]:
    """Once the run's classifier has labeled something and the run is still going: SIGKILL its node."""
    (actor,) = wait_until(lambda: [a for a in classifier_actors() if a.actor_id not in run.actors_before], 300,
                          "the run's classifier actor", run)
    wait_until(lambda: classify_tasks_finished(actor.actor_id), 300, "a first classified batch", run)
    victim = next(n for n in cluster.gpu if node_id(n) == actor.node_id)
    assert run.is_alive(), "the run ended before its classifier node could be lost"
    cluster.remove_node(victim, allow_graceful=False)  # raylet + workers, SIGKILL
    cluster.gpu.remove(victim)
    return time.monotonic(), actor.actor_id


def _recovered(killed_actor: str):
    return [a for a in classifier_actors() if a.actor_id != killed_actor or a.num_restarts]


def test_classifier_node_lost_then_a_new_node_joins(cluster, clean, videos, tmp_path):
    run = Run(cfg_for(_slow_manifest(tmp_path, videos), tmp_path / "out", *SMALL))
    run.start()
    killed_at, actor = _kill_classifier_node(cluster, run)
    time.sleep(2.0)  # the spot market takes a moment
    cluster.gpu.append(add_node(cluster, "gpu"))
    wait_until(lambda: _recovered(actor), 240, "a classifier actor on the new node", run)
    recovered = time.monotonic() - killed_at
    run.join(400)
    assert not run.is_alive() and run.error is None, run.error
    print(f"\nclassifier node lost: actor alive again {recovered:.1f} s after the kill (node added at 2 s); "
          f"run {run.wall:.1f} s vs clean {clean['summary'].wall_sec:.1f} s")
    assert run.summary.committed and run.summary.videos_ok == len(videos)
    assert_equals_clean(tmp_path / "out", clean["out"], videos)


def test_decode_node_then_classifier_node_lost(cluster, clean, videos, tmp_path):
    """Two nodes killed one after the other: the decode node mid-video, then the classifier's node;
    a replacement joins after each."""
    run = Run(cfg_for(_slow_manifest(tmp_path, videos, 1.0), tmp_path / "out", *SMALL))
    run.start()
    busy = wait_until(lambda: {t.node_id for t in decode_tasks("RUNNING")}, 120, "a running decode task", run)
    victim = next(n for n in cluster.decode if node_id(n) in busy)
    cluster.remove_node(victim, allow_graceful=False)
    cluster.decode.remove(victim)
    cluster.decode.append(add_node(cluster, "decode"))
    killed_at, actor = _kill_classifier_node(cluster, run)
    cluster.gpu.append(add_node(cluster, "gpu"))
    run.join(400)
    assert not run.is_alive() and run.error is None, run.error
    print(f"\ndecode node then classifier node lost: run {run.wall:.1f} s")
    assert run.summary.committed and run.summary.videos_ok == len(videos)
    assert_equals_clean(tmp_path / "out", clean["out"], videos)


def test_no_node_can_take_the_classifier_fails_after_stall_timeout(cluster, clean, videos, tmp_path):
    """The classifier's node goes and none comes back: the run fails after run.stall_timeout_sec
    with a message that says so, and commits nothing."""
    from r2p1d_batch.pipeline import RunStalledError

    out = tmp_path / "out"
    # The timeout also covers the classifier actor's start-up (nothing moves while it loads):
    # decode at 2 s per clip (12 clips) keeps the run moving meanwhile, so the actor has ~8 + 20 s
    # to label its first clip (it takes 5-8 s, the ONNX graph cached by the clean run; more
    # while the other xdist worker runs its tests). After the kill the run waits out the rest of
    # the decode and then the timeout.
    run = Run(cfg_for(_slow_manifest(tmp_path, videos, 2.0), out, "run.stall_timeout_sec=20", *SMALL))
    run.start()
    killed_at, _ = _kill_classifier_node(cluster, run)
    run.join(400)
    waited = time.monotonic() - killed_at
    assert not run.is_alive()
    print(f"\nno node for the classifier: the run failed {waited:.1f} s after the kill: {run.error}")
    assert isinstance(run.error, RunStalledError), repr(run.error)
    assert "run.stall_timeout_sec" in str(run.error) and "no alive node can host one" in str(run.error)
    assert 20 <= waited < 300
    assert commit.committed_run_ids(str(out)) == []
    assert not (out / commit.STAGING_DIR).exists() or not any((out / commit.STAGING_DIR).iterdir())
    assert not list(out.glob("clips/part-*")) and not list(out.glob("videos/part-*"))


def test_decode_attempts_lost_with_their_node_are_not_decoder_crashes(cluster):
    """The crash ledger counts attempts that died on nodes still alive (a native crash, an OOM
    kill), not attempts whose node is gone: two preemptions in a row must not turn a good video
    into a DecoderCrashed row."""
    import ray
    from ray.experimental import internal_kv

    from r2p1d_batch.decoding.faults import CRASHES_BEFORE_ERROR, CrashLedger

    ledger = CrashLedger("ledger-test")
    gone = "ab" * 28  # the id of a node that is not (any more) in the cluster
    assert gone not in {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    internal_kv._internal_kv_put(ledger._key("v"), f"{gone} {gone} {gone}", namespace="r2p1d")
    assert ledger.begin("v") == 0  # three attempts lost with their node: not the video's fault
    assert ledger.begin("v") == 1  # the attempt just noted here (alive node) died: that one counts
    assert ledger.begin("v") == CRASHES_BEFORE_ERROR
    ledger.end("v")
    assert ledger.begin("v") == 0
    ledger.end("v")
