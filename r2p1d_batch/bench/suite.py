"""Run the benchmark sections for a mode (tiny | quick | full) and report them."""
from __future__ import annotations

import time
from dataclasses import dataclass

from . import inputs
from .output import format_report, machine, write_json

SECTIONS = ["decode", "sparse", "fidelity", "levers", "model", "e2e", "memory", "overhead", "node"]


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


MODES = {
    "tiny": Mode((("360p", 4),), None, ("360p", 4), 2, 0.0, 1, 2, (), 1.0, ("cpu.yaml",), (), 60.0,
                 overhead_rows=20, node_seconds=4, node_copies=2,
                 levers_videos=(("360p", 4),)),
    # quick: ~3 minutes on 2 idle cores, most of it in the model. e2e runs 4 x 10 clips (the writer
    # gets one block per video: a steady rate needs a few) with the defaults only (sized to the
    # cluster: on 2 cores they equal configs/cpu.yaml; another profile's rows cost ~65 s more).
    "quick": Mode((("360p", 60), ("720p", 60)), 10.0, ("360p", 300), 4, 5.0, 2, None,
                  (("360p", 20),) * 4, 2.0, (None,), (("1080p", 60), ("1080p", 1800)), 60.0,
                  overhead_rows=1000, node_seconds=60, node_copies=8,
                  levers_videos=(("360p", 20), ("720p", 20), ("1080p", 20)), levers_repeats=3),
    "full": Mode((("360p", 60), ("720p", 60)), None, ("360p", 300), 16, 30.0, 5, None,
                 (("360p", 60), ("360p", 60), ("720p", 60), ("720p", 60)), 1.0, (None, "cpu.yaml"),
                 (("1080p", 60), ("1080p", 1800)), 30.0, overhead_rows=5000, overhead_repeats=2,
                 levers_videos=(("360p", 60), ("720p", 60), ("1080p", 60)), levers_repeats=3),
}


def run_suite(mode: str, sections: list[str], *, threads: int = 1, weights: str = "random", inputs_dir=None,
        out: str = "bench.json", gpu_only: bool = False, node_out: str | None = None) -> dict:
    from .. import config as config_mod

    m = MODES[mode]
    vid = lambda k_s: inputs.video(k_s[0], k_s[1], inputs_dir)  # noqa: E731
    result = {"mode": mode, "machine": machine(), "sections": {}}
    t0 = last = time.perf_counter()

    def section(name, rows, notes=(), **extra):
        nonlocal last
        now = time.perf_counter()
        result["sections"][name] = {"rows": rows, "notes": list(notes), "wall_s": now - last, **extra}
        last = now
        write_json(result, out)  # after every section: a long run that dies still leaves figures
        one = {"machine": result["machine"], "sections": {name: result["sections"][name]}}
        print(format_report(one).split("\n", 1)[1],
              flush=True)

    if "decode" in sections:
        from .decode import throughput_rows

        rows, notes = throughput_rows({f"{k}": vid((k, s)) for k, s in m.decode_videos}, threads, m.decode_seconds)
        span = f"the first {m.decode_seconds:g} s" if m.decode_seconds else "the whole file"
        section("decode", rows, notes + [f"frames/s over {span}; best of 3 runs each; every frame "
                                         "converted and resized to 112x112 clips (ours) / RGB24 (ffmpeg, decord)"])
    if "sparse" in sections:
        from .decode import sparse_row

        section("sparse", [sparse_row(vid(m.sparse_video))],
                ["full decode = every frame decoded, none converted (a lower bound for any full decode); "
                 "best of 3 runs each"])
    if "fidelity" in sections:
        from .decode import fidelity_rows

        rows = []
        for k, s in m.decode_videos:
            rows += fidelity_rows(vid((k, s)), m.fidelity_clips, weights)
        section("fidelity", rows, ["vs the exact (preset) path on the same clips; top1_changed is the share of "
                                   "clips whose top-1 label differs (random weights: an upper bound, "
                                   "near-uniform scores flip easily)"])
    if "levers" in sections and m.levers_videos:
        from .levers import lever_rows

        rows, notes = lever_rows({k: vid((k, s)) for k, s in m.levers_videos}, m.levers_repeats)
        section("levers", rows, notes)
    if "model" in sections:
        from .model import runtime_rows

        batch = m.model_batch or config_mod.load().model.effective_batch_size
        import os

        rows, notes = runtime_rows(batch, min(os.cpu_count() or 1, 2), m.model_seconds, m.model_batches, weights,
                                   gpu_only)
        section("model", rows, [f"weights={weights}; max_abs_dlogit vs torch eager fp32 on the same clips; "
                                f"each runtime timed >= {m.model_seconds:g} s and >= {m.model_batches} batches "
                                "after a warm-up batch",
                                *notes])
    if "e2e" in sections and m.e2e_videos:
        from .e2e import e2e_rows

        rows, notes = e2e_rows([vid(v) for v in m.e2e_videos],
                               [f"model.weights={weights}", f"sampling.stride_sec={m.e2e_stride}", "ray.num_cpus=2",
                                "ray.object_store_memory_mb=300"],
                               [p and config_mod.CONFIG_DIR / p for p in m.e2e_profiles], naive_threads=2)
        section("e2e", rows, notes)
    if "memory" in sections and m.memory_videos:
        from .memory import memory_rows

        rows, notes = memory_rows({f"{k}-{s}s": vid((k, s)) for k, s in m.memory_videos},
                                  [f"model.weights={weights}", f"sampling.stride_sec={m.memory_stride}",
                                   # batch 1: the short video has a single clip; the same batch for both
                                   # keeps the classifier's working set out of the comparison
                                   "model.batch_size=1",
                                   "ray.num_cpus=2", "ray.object_store_memory_mb=300"])
        section("memory", rows, notes)
    if "overhead" in sections and m.overhead_rows:
        from .overhead import overhead_rows

        rows, notes = overhead_rows(m.overhead_rows, m.overhead_repeats,
                                    [f"model.weights={weights}", "ray.num_cpus=2", "ray.object_store_memory_mb=300"])
        section("overhead", rows, notes)
    if "node" in sections:
        from pathlib import Path

        from .node import node_rows, write_node_json

        res = ("360p",) if mode == "tiny" else None
        rows, notes = node_rows(m.node_seconds, m.node_copies, weights, inputs_dir,
                                **({"resolutions": res} if res else {}))
        section("node", rows, notes)
        if any(r.get("skipped") is None for r in rows):  # measured rows only: never a file of skips
            path = Path(node_out or Path(out).with_name("bench-gpu.json"))
            write_node_json(rows, notes, result["machine"], path)
            print(f"wrote {path}")
    result["wall_s"] = time.perf_counter() - t0
    write_json(result, out)
    print(f"\nwrote {out} ({result['wall_s']:.0f} s)")
    return result
