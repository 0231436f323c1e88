"""Defaults that size themselves to the cluster, and the decode stage's input blocks. Pure
arithmetic (no ray): the pipeline passes in ``ray.cluster_resources()``.

Only keys the user did not set (``Config.explicit``: a profile, ``--set``) are sized:

- **CPU-only cluster**: the model is the slow stage (ONNX Runtime ~1.4 clips/s per core vs
  decode ~17.6 clips/s per core at 360p), so decode gets ``DECODE_SHARE`` of the cores (at
  least ``MIN_DECODE_CPUS``) and the classifier the rest, its ONNX Runtime threads equal to its
  reservation (``round(model.num_cpus)``), in actors of at most ``MAX_ACTOR_THREADS`` threads;
  cores left over by whole-thread actors go back to decode. On 2 cores this is
  ``configs/cpu.yaml``: decode 0.25, one classifier actor with 1.75 (2 threads).
- **GPU cluster**: one GPU classifier actor (``model.num_gpus=1``; a node is decode-bound by
  two orders of magnitude, README "Sizing") and every other core decodes, one task per core.
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


def decode_slots(cfg: Config, cpus: float) -> int:
    """Decode tasks that can run at once: the CPUs the classifier actors leave, per task."""
    actors = cfg.model.concurrency[1] if isinstance(cfg.model.concurrency, tuple) else cfg.model.concurrency or 1
    free = max(0.0, cpus - actors * cfg.model.num_cpus)
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
        return chosen  # decode.num_cpus 1, decode.concurrency null: every free core decodes
    if m.num_gpus > 0:  # the user asked for GPU actors: leave the CPUs as configured
        return chosen
    decode_explicit = "decode.num_cpus" in explicit
    decode = cfg.decode.num_cpus if decode_explicit else max(MIN_DECODE_CPUS, cpus * DECODE_SHARE)
    if not decode_explicit and decode >= 1:
        decode = float(math.floor(decode))
    model_total = max(MIN_DECODE_CPUS, cpus - decode)
    if "model.num_cpus" in explicit:
        actors = m.concurrency[1] if isinstance(m.concurrency, tuple) else m.concurrency or 1
        model_total = m.num_cpus * actors
    else:
        if "model.concurrency" in explicit:
            actors = m.concurrency[1] if isinstance(m.concurrency, tuple) else m.concurrency or 1
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
    if not decode_explicit:
        free = cpus - model_total
        # Whole cores decode one task each; less than one core: one task on what is left.
        chosen["decode.num_cpus"] = 1.0 if free >= 1 else round(max(MIN_DECODE_CPUS, free), 4)
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
