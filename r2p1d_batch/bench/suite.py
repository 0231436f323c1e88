"""Run the benchmark sections for a mode (tiny | quick | full): a table of sections, name ->
function(mode, ctx) returning its rows and notes. ``r2p1d bench`` prints them and writes the JSON."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from . import inputs
from .output import machine


@dataclass(frozen=True)
class Mode:
    decode_videos: tuple[tuple[str, int], ...]  # (kind, seconds of file)
    decode_seconds: float | None  # decode this much of each (None: all)
    sparse_video: tuple[str, int]
    fidelity_clips: int
    model_seconds: float  # time each runtime for at least this long ...
    model_batches: int  # ... and at least this many batches (after a warm-up batch)
    model_batch: int | None  # None: the configured batch size
    e2e_videos: tuple[tuple[str, int], ...]
    e2e_stride: float
    e2e_profiles: tuple[str | None, ...]  # config files in configs/ (None: the defaults)
    memory_videos: tuple[tuple[str, int], ...]
    memory_stride: float
    overhead_rows: int = 0  # manifest rows of missing files (per-video overhead; 0: skip)
    overhead_repeats: int = 1  # best of this many, pipeline and bare interleaved
    node_seconds: int = 60  # node section (GPU node only): 60-s videos ...
    node_copies: int = 16  # ... this many per run and resolution
    levers_videos: tuple[tuple[str, int], ...] = ()  # decode levers: (kind, seconds) per resolution
    levers_repeats: int = 1
    node_resolutions: tuple[str, ...] | None = None  # None: node.RESOLUTIONS
    curate_sizes: tuple[int, ...] = (25_000, 50_000, 100_000)  # duplicate report: clips, each size a fresh process
    curate_storage_clips: int = 20_000  # Parquet bytes per clip over this many clips
    curate_model: tuple[int, int, int] = (8, 3, 2)  # embedding cost: batch, rounds, batches per round
    scale_rows: tuple[int, ...] = (1_000_000, 3_000_000, 10_000_000)  # skip-all reruns: manifest rows, each size
    scale_changed_rows: int = 1_000_000  # a 1%-changed run of this many rows (time to the first decoded rows)
    scale_repeats: int = 2
    driver_clips: int = 200_000  # write path per clip: synthetic labeled clips per case
    # history: (videos, clips per video, nights, share relabeled a night, output.rows_per_file)
    history: tuple[int, int, int, float, int] = (20_000, 10, 365, 0.01, 50_000)
    # int8 (on request): --config cpu with and without model.int8 over these videos
    int8_videos: tuple[tuple[str, int], ...] = (("360p", 30),) * 6


MODES = {
    "tiny": Mode((("360p", 4),), None, ("360p", 4), 2, 0.0, 1, 2, (), 1.0, ("cpu.yaml",), (), 60.0,
                 overhead_rows=20, node_seconds=4, node_copies=2, node_resolutions=("360p",),
                 levers_videos=(("360p", 4),), curate_sizes=(2_000,), curate_storage_clips=2_000,
                 scale_rows=(2_000,), scale_changed_rows=2_000, scale_repeats=1, driver_clips=2_000,
                 curate_model=(1, 1, 1), history=(200, 4, 12, 0.05, 200), int8_videos=(("360p", 4),) * 2),
    # quick: ~3 minutes on 2 idle cores, most of it in the model. e2e runs 4 x 10 clips (the writer
    # gets one block per video: a steady rate needs a few) with the defaults only (sized to the
    # cluster: on 2 cores they equal configs/cpu.yaml; another profile's rows cost ~65 s more).
    "quick": Mode((("360p", 60), ("720p", 60)), 10.0, ("360p", 300), 4, 5.0, 2, None,
                  (("360p", 20),) * 4, 2.0, (None,), (("1080p", 60), ("1080p", 1800)), 60.0,
                  overhead_rows=1000, node_seconds=60, node_copies=8,
                  levers_videos=(("360p", 20), ("720p", 20), ("1080p", 20)), levers_repeats=3,
                  curate_sizes=(25_000,), curate_model=(8, 2, 1), scale_rows=(1_000_000,)),
    "full": Mode((("360p", 60), ("720p", 60)), None, ("360p", 300), 16, 30.0, 5, None,
                 (("360p", 60), ("360p", 60), ("720p", 60), ("720p", 60)), 1.0, (None, "cpu.yaml"),
                 (("1080p", 60), ("1080p", 1800)), 30.0, overhead_rows=5000, overhead_repeats=2,
                 levers_videos=(("360p", 60), ("720p", 60), ("1080p", 60)), levers_repeats=3),
}


@dataclass(frozen=True)
class Context:
    """What the sections share besides their mode's sizes."""
    threads: int = 1  # decoder threads for ours, ffmpeg and decord
    weights: str = "random"
    inputs_dir: Optional[str] = None  # the cached input videos (None: inputs.cache_dir's default)
    gpu_only: bool = False
    node_out: Path = Path("bench-gpu.json")  # the node section's own JSON
    machine: dict[str, Any] = field(default_factory=dict)

    def video(self, kind_seconds: tuple[str, int]) -> Path:
        return inputs.video(kind_seconds[0], kind_seconds[1], self.inputs_dir)


@dataclass(frozen=True)
class Section:
    """One section's figures: a table of ``rows`` and its ``notes``; ``extra``: more keys of the
    section's JSON; ``files``: other files the section wrote (reported, not part of the JSON)."""
    rows: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    files: tuple[Path, ...] = ()


# A small local Ray for the sections that run the job: 2 CPUs, a 300 MB object store.
_SMALL_RAY = ["ray.num_cpus=2", "ray.object_store_memory_mb=300"]


def _decode(m: Mode, ctx: Context) -> Section:
    from .decode import throughput_rows

    rows, notes = throughput_rows({f"{k}": ctx.video((k, s)) for k, s in m.decode_videos}, ctx.threads,
                                  m.decode_seconds)
    span = f"the first {m.decode_seconds:g} s" if m.decode_seconds else "the whole file"
    return Section(rows, notes + [f"frames/s over {span}; best of 3 runs each; every frame "
                                  "converted and resized to 112x112 clips (ours) / RGB24 (ffmpeg, decord)"])


def _sparse(m: Mode, ctx: Context) -> Section:
    from .decode import sparse_row

    return Section([sparse_row(ctx.video(m.sparse_video))],
                   ["full decode = every frame decoded, none converted (a lower bound for any full decode); "
                    "best of 3 runs each"])


def _fidelity(m: Mode, ctx: Context) -> Section:
    from .decode import fidelity_rows

    rows = []
    for k, s in m.decode_videos:
        rows += fidelity_rows(ctx.video((k, s)), m.fidelity_clips, ctx.weights)
    return Section(rows, ["vs the exact (preset) path on the same clips; top1_changed is the share of "
                          "clips whose top-1 label differs (random weights: an upper bound, "
                          "near-uniform scores flip easily)"])


def _levers(m: Mode, ctx: Context) -> Optional[Section]:
    if not m.levers_videos:
        return None
    from .levers import lever_rows

    return Section(*lever_rows({k: ctx.video((k, s)) for k, s in m.levers_videos}, m.levers_repeats))


def _model(m: Mode, ctx: Context) -> Section:
    import os

    from .. import config as config_mod
    from .model import runtime_rows

    batch = m.model_batch or config_mod.load().model.effective_batch_size
    rows, notes = runtime_rows(batch, min(os.cpu_count() or 1, 2), m.model_seconds, m.model_batches, ctx.weights,
                               ctx.gpu_only)
    return Section(rows, [f"weights={ctx.weights}; max_abs_dlogit vs torch eager fp32 on the same clips; "
                          f"each runtime timed >= {m.model_seconds:g} s and >= {m.model_batches} batches "
                          "after a warm-up batch",
                          *notes])


def _e2e(m: Mode, ctx: Context) -> Optional[Section]:
    if not m.e2e_videos:
        return None
    from .. import config as config_mod
    from .e2e import e2e_rows

    return Section(*e2e_rows([ctx.video(v) for v in m.e2e_videos],
                             [f"model.weights={ctx.weights}", f"sampling.stride_sec={m.e2e_stride}", *_SMALL_RAY],
                             [p and config_mod.CONFIG_DIR / p for p in m.e2e_profiles], naive_threads=2))


def _memory(m: Mode, ctx: Context) -> Optional[Section]:
    if not m.memory_videos:
        return None
    from .memory import memory_rows

    return Section(*memory_rows({f"{k}-{s}s": ctx.video((k, s)) for k, s in m.memory_videos},
                                [f"model.weights={ctx.weights}", f"sampling.stride_sec={m.memory_stride}",
                                 # batch 1: the short video has a single clip; the same batch for both
                                 # keeps the classifier's working set out of the comparison
                                 "model.batch_size=1", *_SMALL_RAY]))


def _overhead(m: Mode, ctx: Context) -> Optional[Section]:
    if not m.overhead_rows:
        return None
    from .overhead import overhead_rows

    return Section(*overhead_rows(m.overhead_rows, m.overhead_repeats, [f"model.weights={ctx.weights}", *_SMALL_RAY]))


def _node(m: Mode, ctx: Context) -> Section:
    from .node import node_rows, write_node_json

    res = {"resolutions": m.node_resolutions} if m.node_resolutions else {}
    rows, notes = node_rows(m.node_seconds, m.node_copies, ctx.weights, ctx.inputs_dir, **res)
    if not any(r.get("skipped") is None for r in rows):  # measured rows only: never a file of skips
        return Section(rows, notes)
    return Section(rows, notes, files=(write_node_json(rows, notes, ctx.machine, ctx.node_out),))


def _scale(m: Mode, ctx: Context) -> Section:
    from .driver import driver_rows
    from .scale import plan_rows

    writes, write_notes = driver_rows(m.driver_clips)
    plans = plan_rows(m.scale_rows, m.scale_repeats, changed_rows=m.scale_changed_rows,
                      root=inputs.cache_dir(ctx.inputs_dir) / "scale")
    notes = ["plan: a nightly incremental rerun through pipeline.label in a fresh process (wall, peak RSS); "
             "skip-all: every row committed with a matching fingerprint; 1% changed: stopped at the first decoded "
             "rows; inputs cached in the bench's inputs directory, scale/ (minutes to build at 10M)",
             *(f"write: {n}" for n in write_notes)]
    return Section([{"part": "plan", **r} for r in plans] + [{"part": "write", **r} for r in writes], notes)


def _history(m: Mode, ctx: Context) -> Section:
    from .history import history_rows

    videos, clips, nights, churn, rows_per_file = m.history
    return Section(*history_rows(videos, clips, nights, churn, rows_per_file, inputs.cache_dir(ctx.inputs_dir)))


def _int8(m: Mode, ctx: Context) -> Section:
    from .e2e import int8_job_rows

    # One cached input per (kind, seconds), each a manifest row of its own (as e2e): the graph's
    # held-out clips may then repeat calibration clips; this section measures speed.
    return Section(*int8_job_rows([ctx.video(v) for v in m.int8_videos],
                                  [f"model.weights={ctx.weights}", *_SMALL_RAY]))


def _curate(m: Mode, ctx: Context) -> Section:
    from .curate import curate_rows

    return Section(*curate_rows(m.curate_sizes, m.curate_storage_clips, m.curate_model))


# name -> function(mode, ctx): its Section, or None where the mode has nothing for it to measure.
# They run in this order, whatever order they are asked for in.
_SECTIONS: dict[str, Callable[[Mode, Context], Optional[Section]]] = {
    "decode": _decode, "sparse": _sparse, "fidelity": _fidelity, "levers": _levers, "model": _model, "e2e": _e2e,
    "memory": _memory, "overhead": _overhead, "node": _node, "curate": _curate, "scale": _scale,
    "history": _history, "int8": _int8,
}
ON_REQUEST = ["curate", "scale", "history", "int8"]  # run only when named (--only curate ...): not in a default run
SECTIONS = [s for s in _SECTIONS if s not in ON_REQUEST]  # a default run's sections, in order

# on_section(name, result so far, other files the section wrote)
OnSection = Callable[[str, dict[str, Any], tuple[Path, ...]], None]


def run_suite(mode: str, sections: list[str], *, threads: int = 1, weights: str = "random", inputs_dir=None,
              gpu_only: bool = False, node_out: str | Path = "bench-gpu.json",
              on_section: Optional[OnSection] = None) -> dict:
    """Run ``sections`` at ``mode``'s sizes: {"mode", "machine", "sections": {name: {"rows", "notes",
    "wall_s", ...}}, "wall_s"}. ``on_section`` is called after every section with the result so
    far (``r2p1d bench`` prints the section and saves the JSON then: a long run that dies still
    leaves figures) and the other files that section wrote."""
    m = MODES[mode]
    ctx = Context(threads, weights, inputs_dir, gpu_only, Path(node_out), machine())
    result: dict[str, Any] = {"mode": mode, "machine": ctx.machine, "sections": {}}
    t0 = last = time.perf_counter()
    for name, measure in _SECTIONS.items():
        section = measure(m, ctx) if name in sections else None
        if section is None:
            continue
        now = time.perf_counter()
        result["sections"][name] = {"rows": section.rows, "notes": list(section.notes), "wall_s": now - last,
                                    **section.extra}
        last = now
        if on_section:
            on_section(name, result, section.files)
    result["wall_s"] = time.perf_counter() - t0
    return result
