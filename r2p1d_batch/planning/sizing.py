"""Defaults that size themselves to the cluster, and the decode stage's input blocks. Pure
arithmetic (no ray): the pipeline passes in ``ray.cluster_resources()``.

Only keys the user did not set (``Config.explicit``: a profile, ``--set``) are sized:

- **CPU-only cluster**: the model is the slow stage (ONNX Runtime ~1.4 clips/s per core vs
  decode ~17.6 clips/s per core at 360p), so decode gets ``DECODE_SHARE`` of the cores (at
  least ``MIN_DECODE_CPUS``) and the classifier the rest, its ONNX Runtime threads equal to its
  reservation (``round(model.num_cpus)``), in actors of at most ``MAX_ACTOR_THREADS`` threads;
  cores left over by whole-thread actors go back to decode, split evenly over as many decode
  tasks as whole cores; the writer stage keeps ``WRITER_CPUS``, and decode tasks are capped at
  what fits (``decode.concurrency``), so Ray Data reserves the writer its share. On 2 cores this
  is ``configs/cpu.yaml``: decode 0.25, one classifier actor with 1.5 (2 threads), writer 0.25.
- **GPU cluster**: one GPU classifier actor (``model.num_gpus=1``; a node is decode-bound by
  two orders of magnitude, docs/performance.md, "Sizing a GPU cluster") sharing a core with the
  writer (0.75 + 0.25), and every other core decodes, one task per core.
"""
from __future__ import annotations

import math
from typing import Any

from ..config import Config

# Decode's share of a CPU-only cluster: model ~1.4 clips/s per core, decode ~17.6 at 360p, so
# one decode core feeds ~12 model cores (1 / 13 of the cluster).
DECODE_SHARE = 1 / 13
MIN_DECODE_CPUS = 0.25  # one decode task on a quarter core keeps up with 2 model cores (cpu.yaml)
MAX_ACTOR_THREADS = 8  # threads per ONNX Runtime actor; past that, more actors
# The writer stage (runs/clip_writer.py) reserves a quarter core per task. It needs ~1-2 % of a
# core at a GPU's ~1,500 clips/s (docs/bench.md): the reservation is what matters, so decode
# tasks never take every core and leave the writer nothing until decode is done.
WRITER_CPUS = 0.25

# Decode input blocks: one per video costs a Ray task per video (the per-video overhead of a
# manifest of short or failing videos); many videos per block leave cores idle at the tail.
# 64, not 16: a task costs Ray ~0.2-0.3 s here, and 5,000 failing rows ran in 33 s instead of
# ~40 (docs/bench.md); the tail is still bounded by BLOCKS_PER_SLOT.
ROWS_PER_BLOCK_MAX = 64
BLOCKS_PER_SLOT = 8  # each decode slot gets at least this many blocks: the tail is <= 1/8 of its work
MAX_BLOCKS = 4096


def decode_blocks(rows: int, slots: int) -> int:
    """Input blocks for ``rows`` manifest rows and ``slots`` concurrent decode tasks: at least
    BLOCKS_PER_SLOT per slot (load balance, short tails), at most ROWS_PER_BLOCK_MAX rows per
    block while under MAX_BLOCKS, never more blocks than rows."""
    if rows <= 0:
        return 1
    want = max(math.ceil(rows / ROWS_PER_BLOCK_MAX), BLOCKS_PER_SLOT * max(1, slots))
    return max(1, min(rows, want, MAX_BLOCKS))


def _most(concurrency) -> int:
    return concurrency[1] if isinstance(concurrency, tuple) else concurrency or 1


def writer_tasks(cfg: Config) -> int:
    """Writer tasks at once: one per GPU classifier actor (a task writes a part file of ~60k clips
    in a second or two, far faster than a GPU labels them); one where the classifier runs on
    CPUs (a few clips/s)."""
    return _most(cfg.model.concurrency) if cfg.model.num_gpus > 0 else 1


def decode_slots(cfg: Config, cpus: float) -> int:
    """Decode tasks that can run at once: the CPUs the classifier actors and the writer tasks
    leave, per task."""
    actors = _most(cfg.model.concurrency)
    free = max(0.0, cpus - actors * cfg.model.num_cpus - writer_tasks(cfg) * WRITER_CPUS)
    slots = max(1, int(free / cfg.decode.num_cpus + 1e-9))
    conc = cfg.decode.concurrency
    if conc is not None:
        slots = min(slots, conc[1] if isinstance(conc, tuple) else conc)
    return slots


def sized_keys(cpus: float, gpus: float, explicit: frozenset, cfg: Config,
         largest_node_cpus: float | None = None) -> dict[str, Any]:
    """The sized settings (dotted keys -> values) for a cluster of ``cpus`` and ``gpus``; keys
    in ``explicit`` are left out (the user's value wins). A classifier actor is never sized past
    ``largest_node_cpus`` (the biggest node it may run on)."""
    chosen: dict[str, Any] = {}
    m = cfg.model
    if gpus >= 1 and m.device != "cpu":
        if "model.num_gpus" not in explicit:
            chosen["model.num_gpus"] = 1
        if "model.num_cpus" not in explicit:  # the GPU actor and its writer task share one core
            chosen["model.num_cpus"] = 1.0 - WRITER_CPUS
        return chosen  # decode.num_cpus 1, decode.concurrency null: every other core decodes
    if m.num_gpus > 0:  # the user asked for GPU actors: leave the CPUs as configured
        return chosen
    decode_explicit = "decode.num_cpus" in explicit
    decode = cfg.decode.num_cpus if decode_explicit else max(MIN_DECODE_CPUS, cpus * DECODE_SHARE)
    if not decode_explicit and decode >= 1:
        decode = float(math.floor(decode))
    model_total = max(MIN_DECODE_CPUS, cpus - decode - WRITER_CPUS)
    if "model.num_cpus" in explicit:
        actors = _most(m.concurrency)
        model_total = m.num_cpus * actors
    else:
        if "model.concurrency" in explicit:
            actors = _most(m.concurrency)
        else:
            actors = max(1, math.ceil(model_total / MAX_ACTOR_THREADS))
            chosen["model.concurrency"] = actors
        per_actor = model_total / actors
        if largest_node_cpus:  # an actor lives on one node: never ask for more than the biggest has
            per_actor = min(per_actor, largest_node_cpus)
        if per_actor >= 2:  # whole threads; the remainder goes to decode below
            per_actor = float(math.floor(per_actor))
        chosen["model.num_cpus"] = round(per_actor, 4)
        model_total = per_actor * actors
    free = cpus - model_total - WRITER_CPUS
    if not decode_explicit:
        # As many decode tasks as whole cores left, sharing them evenly (1.75 cores: 2 tasks of
        # 0.875); less than one core: one task on what is left.
        tasks = round(free)
        per_task = math.floor(free / tasks * 1e4) / 1e4 if tasks >= 1 else round(max(MIN_DECODE_CPUS, free), 4)
        chosen["decode.num_cpus"] = per_task
    if "decode.concurrency" not in explicit:
        # Capped at what fits: Ray Data reserves an uncapped task pool more than one task's share,
        # which on a small cluster left the writer's quarter core unreserved until decode was done.
        per_task = chosen.get("decode.num_cpus", cfg.decode.num_cpus)
        chosen["decode.concurrency"] = max(1, int(free / per_task + 1e-9))
    return chosen


def size_to_cluster(cfg: Config, resources: dict[str, float],
                    largest_node_cpus: float | None = None) -> tuple[Config, dict[str, Any]]:
    """``cfg`` with its unset resource keys sized for ``resources`` (ray.cluster_resources()),
    and a record of the decision for the run summary. ``largest_node_cpus``: the most CPUs one
    node that may host a classifier actor has (an actor cannot span nodes)."""
    cpus, gpus = float(resources.get("CPU", 0) or 0), float(resources.get("GPU", 0) or 0)
    chosen = sized_keys(cpus, gpus, cfg.explicit, cfg, largest_node_cpus)
    sized = cfg
    if chosen:
        sections: dict[str, dict] = {}
        for key, value in chosen.items():
            section, name = key.split(".")
            sections.setdefault(section, {})[name] = value
        sized = cfg.model_copy(update={s: getattr(cfg, s).model_copy(update=v) for s, v in sections.items()})
        sized = type(cfg).model_validate(sized.model_dump())  # re-validated: a sized value obeys the same rules
        sized._explicit = cfg.explicit
    record = {
        "cluster": {"CPU": cpus, "GPU": gpus},
        "kind": "gpu" if gpus >= 1 and cfg.model.device != "cpu" else "cpu",
        "chosen": chosen,
        "kept": sorted(k for k in ("decode.num_cpus", "model.num_cpus", "model.num_gpus", "model.concurrency")
                       if k in cfg.explicit),
        "decode_slots": decode_slots(sized, cpus),
        "model_threads": max(1, round(sized.model.num_cpus)),
    }
    return sized, record
