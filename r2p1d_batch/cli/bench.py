"""Benchmark every stage side by side (decode, sparse, fidelity, levers, model, e2e, memory,
overhead; node on a GPU node). `--only curate` measures what curation costs (the
embedding output, its bytes per clip, the duplicate report at scale) and `--only scale` what the
driver costs at collection size (a skip-all nightly rerun of 1M/3M/10M rows: wall and peak RSS;
a 1%-changed run to its first decoded rows; the write path per clip on the driver and on the
workers); `--only int8` a label run with `--config cpu` with and without `model.int8` on the
same videos (`r2p1d quantize` first); these and `--only history` run only when named.

  r2p1d bench [--quick|--tiny] [--gpu-only] [--only SECTION] [--out bench.json]

Inputs are synthetic H.264 videos generated once and cached (R2P1D_BENCH_INPUTS or
~/.cache/r2p1d_batch/bench). Prints a table per section and writes them all as JSON.
"""
from __future__ import annotations

import argparse

from .args import command


def add_parser(sub) -> None:
    from ..bench.suite import ON_REQUEST, SECTIONS

    p = command(sub, "bench", __doc__, run)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="short inputs, a few minutes on 2 cores")
    size.add_argument("--tiny", action="store_true", help="smoke run on tiny inputs (seconds; figures meaningless)")
    p.add_argument("--gpu-only", action="store_true", help="only the model stage (CUDA rows when a GPU exists)")
    p.add_argument("--node-out", help="node section's JSON (default: bench-gpu.json beside --out; GPU node only)")
    p.add_argument("--only", action="append", choices=SECTIONS + ON_REQUEST,
                   help="run only these sections (repeatable; curate, scale, history and int8 run only when named)")
    p.add_argument("--threads", type=int, default=1, help="decoder threads for ours, ffmpeg and decord (default 1)")
    p.add_argument("--weights", default="random", help="model weights (kinetics400 when cached)")
    p.add_argument("--inputs", help="directory for the cached input videos")
    p.add_argument("--out", default="bench.json", help="JSON output path (default bench.json)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..bench.output import format_report, write_json
    from ..bench.suite import SECTIONS, run_suite

    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    sections = ["model"] if args.gpu_only else (args.only or SECTIONS)

    def on_section(name: str, result: dict, files: tuple[Path, ...]) -> None:
        write_json(result, args.out)  # after every section: a long run that dies still leaves figures
        one = {"machine": result["machine"], "sections": {name: result["sections"][name]}}
        print(format_report(one).split("\n", 1)[1], flush=True)
        for path in files:
            print(f"wrote {path}")

    result = run_suite(mode, sections, threads=args.threads, weights=args.weights, inputs_dir=args.inputs,
                       gpu_only=args.gpu_only, node_out=args.node_out or Path(args.out).with_name("bench-gpu.json"),
                       on_section=on_section)
    write_json(result, args.out)
    print(f"\nwrote {args.out} ({result['wall_s']:.0f} s)")
    return 0
