"""Where the Ray stages run, how Ray retries them, and what keeps them separate operators.

- Placement: decode tasks and classifier actors each take `label_selector` (Ray node labels) and
  `resources` (custom Ray resources) from config, so decode can be kept off GPU nodes and the
  classifier on them (configs/cluster.yaml, infra/). `num_gpus` alone already puts a GPU actor
  on a GPU node; the labels keep CPU-only decode work off it.
- Retries: Ray Data's own defaults, on purpose. Decode tasks are retried without limit
  (`max_retries=-1`): a video that kills its decoder natively is bounded by the crash ledger in
  faults.py instead (an error row after CRASHES_BEFORE_ERROR deaths on live nodes), and a
  preempted node is not the video's fault. Classifier actors restart without limit and their
  tasks are retried without limit (`max_restarts=-1, max_task_retries=-1`): a task whose actor
  died with its node waits for the replacement actor instead of failing after a fixed count
  while that actor is still being placed (the failure this module was written for). The bound
  is time, not a count: `run.stall_timeout_sec` (pipeline.py). Ray 2.60 deprecates passing
  these through map_batches (`**ray_remote_args`, `ray_remote_args_fn`; removed in 2.64) and has
  no named replacement, so nothing here passes them.
- Separate operators, not one: Ray Data fuses a task stage into the next actor stage whenever
  their remote args are equal; decode would then run inside the classifier actors, serially per
  actor. Until 2.60 the deprecated `ray_remote_args_fn` kept them apart as a side effect. Now
  decode tasks carry their own `runtime_env` (env var R2P1D_STAGE=decode, plus the test hooks
  when a test runs), one of the named arguments 2.60 keeps, so the two stages' args never
  compare equal, whatever the placement config. The writer stage after the classifier is a task
  pool; Ray 2.60 fuses only a task-pool operator into the next one, never an actor pool into
  what follows, so it stays its own operator (its `runtime_env`, R2P1D_STAGE=write, keeps that
  true should fusion rules widen). `check_stages` reads the plan Ray will execute (the optimized
  physical plan, from Ray's plan objects) and refuses to run a fused one; tests/test_multinode.py
  asserts it for every config profile.
- The writer tasks ask for `sizing.WRITER_CPUS` each, at most `sizing.writer_tasks` at once, and
  no node labels: they run wherever that quarter core is free (sizing.py keeps it free).
"""
from __future__ import annotations

import ray

from ..config import Config
from .sizing import WRITER_CPUS

STAGE_ENV = "R2P1D_STAGE"
DECODE_OP, CLASSIFY_OP, WRITE_OP = "MapBatches(DecodeStage)", "ClassifierActor", "MapBatches(ClipWriter)"
# (NvdecDecodeStage is its own lane.)


def _stage_env(stage: str, test_hooks: bool) -> dict:
    """A task stage's runtime_env: its name (which keeps Ray from fusing it with its neighbour)
    and, only when a test drives the run, the fault-injection hooks."""
    env = {STAGE_ENV: stage}
    if test_hooks:
        from ..decoding.faults import TEST_HOOKS_ENV

        env[TEST_HOOKS_ENV] = "1"
    return {"env_vars": env}


def stage_args(cfg: Config, test_hooks: bool = False) -> tuple[dict, dict]:
    """Named map_batches arguments (no deprecated ones) for the decode and classify stages."""
    decode = dict(num_cpus=cfg.decode.num_cpus, runtime_env=_stage_env("decode", test_hooks))
    classify = dict(num_cpus=cfg.model.num_cpus, num_gpus=cfg.model.num_gpus or None)
    for args, section in ((decode, cfg.decode), (classify, cfg.model)):
        if section.label_selector:
            args["label_selector"] = dict(section.label_selector)
        if section.resources:
            args["resources"] = dict(section.resources)
    return decode, classify


def writer_args(cfg: Config, test_hooks: bool = False) -> dict:
    """Named map_batches arguments for the writer stage (runs/clip_writer.py; its test hook is
    testing/hooks.writer_exit)."""
    return dict(num_cpus=WRITER_CPUS, runtime_env=_stage_env("write", test_hooks))


def task_pool(concurrency) -> ray.data.TaskPoolStrategy:
    size = concurrency[1] if isinstance(concurrency, tuple) else concurrency
    return ray.data.TaskPoolStrategy(size=size)


def actor_pool(concurrency) -> ray.data.ActorPoolStrategy:
    if isinstance(concurrency, tuple):
        return ray.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])
    return ray.data.ActorPoolStrategy(size=concurrency or 1)


def classifier_bundle(cfg: Config) -> dict[str, float]:
    """What one classifier actor asks of a node (for messages and placement checks)."""
    bundle = {"CPU": cfg.model.num_cpus, **cfg.model.resources}
    if cfg.model.num_gpus:
        bundle["GPU"] = cfg.model.num_gpus
    return bundle


def physical_operators(ds: ray.data.Dataset) -> list[str]:
    """The physical operators Ray Data will execute for ``ds``, sink first, as
    ``"<operator class>[<name>]"`` (e.g. ``TaskPoolMapOperator[MapBatches(DecodeStage)]``).

    Read from Ray's plan objects, the way ``Dataset.explain()`` builds its "Physical Plan
    (Optimized)" section but without printing or mutating the dataset's plan: logical optimizer,
    planner, physical optimizer (fusion happens there). These are ray.data._internal APIs, pinned
    by requirements.lock; tests/test_multinode.py fails loudly if a Ray upgrade moves them."""
    from ray.data._internal.logical.optimizers import LogicalOptimizer, PhysicalOptimizer
    from ray.data._internal.planner import create_planner

    logical = LogicalOptimizer().optimize(ds._logical_plan)
    physical, _ = create_planner().plan(logical)
    out, todo = [], [PhysicalOptimizer().optimize(physical).dag]
    while todo:
        op = todo.pop()
        out.append(f"{type(op).__name__}[{op.name}]")
        todo.extend(reversed(op.input_dependencies))
    return out


class FusedStagesError(RuntimeError):
    pass


def check_stages(ds) -> list[str]:
    """Decode as a task operator, the classifier as an actor operator and the writer as a task
    operator, each its own; else raise."""
    ops = physical_operators(ds)
    decode = [op for op in ops if DECODE_OP in op]
    classify = [op for op in ops if CLASSIFY_OP in op]
    write = [op for op in ops if WRITE_OP in op]
    apart = (
        len(decode) == 1 and len(classify) == 1 and len(write) == 1 and len({*decode, *classify, *write}) == 3
        and decode[0].startswith("TaskPoolMapOperator[") and classify[0].startswith("ActorPoolMapOperator[")
        and write[0] == f"TaskPoolMapOperator[{WRITE_OP}]"
    )
    if not apart:
        raise FusedStagesError(
            "Ray Data would not run decode, classify and write as three operators (a task pool feeding "
            f"an actor pool feeding a task pool); its plan is {ops}. Fused, every classifier actor "
            "decodes its own input serially, or writes in its own process. See "
            "r2p1d_batch/planning/placement.py for what keeps them apart."
        )
    return ops


def _classifier_nodes(cfg: Config) -> list[dict]:
    """Alive nodes whose labels the classifier's label_selector admits (ray.nodes() entries)."""
    return [n for n in ray.nodes() if n.get("Alive") and all(
        _label_matches(n.get("Labels", {}).get(k), sel) for k, sel in cfg.model.label_selector.items())]


def classifier_hosts(cfg: Config) -> list[str]:
    """Alive nodes whose total resources and labels could hold one classifier actor (ids)."""
    need = classifier_bundle(cfg)
    return [n["NodeID"] for n in _classifier_nodes(cfg)
            if all(n.get("Resources", {}).get(k, 0) >= v for k, v in need.items())]


def _label_matches(value, selector: str) -> bool:
    negate = selector.startswith("!")
    body = selector[1:] if negate else selector
    choices = [c.strip() for c in body[3:-1].split(",")] if body.startswith("in(") and body.endswith(")") else [body]
    return (value not in choices) if negate else (value in choices)


def largest_classifier_node_cpus(cfg: Config) -> float | None:
    """The most CPUs of an alive node whose labels the classifier may run on (None: no node)."""
    cpus = [n.get("Resources", {}).get("CPU", 0.0) for n in _classifier_nodes(cfg)]
    return max(cpus) if cpus else None
