"""Build the int8 CPU graph from clips of your manifest, and measure it against fp32.

  r2p1d quantize MANIFEST --output DIR [--config C] [--set k=v ...]

Decodes a seeded sample of the manifest's videos with the job's own decode and sampling,
calibrates ONNX Runtime's static quantization on some of their clips (quantize.*), and
measures the int8 graph against fp32 on clips of other videos. DIR (local or s3://) gets
model.int8.onnx and report.json; label with --set model.int8=DIR. Exit status: 0 the agreement
meets the budget, 1 it misses (the report names what; label refuses the graph), 2 bad
manifest, config or weights. docs/int8.md.
"""
from __future__ import annotations

import argparse
import json

from .. import config as config_mod
from .args import add_config_args, command


def add_parser(sub) -> None:
    p = command(sub, "quantize", __doc__, run)
    p.add_argument("manifest", help="Parquet manifest (local path or s3://) whose clips calibrate and test the graph")
    p.add_argument("--output", "-o", required=True, help="graph directory (local or s3://)")
    add_config_args(p)
    p.set_defaults(default_log_level="INFO")


def run(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config, args.overrides, manifest=args.manifest)
    from ..classifying.int8 import speed_note
    from ..quantizing import quantize

    built = quantize(cfg, args.output)
    r, a = built.report, built.report["agreement"]
    print(f"int8 graph -> {args.output} ({r['graph_bytes'] / 2**20:.1f} MiB, weights {r['weights']}, "
          f"{r['quantization']['method']} on {r['calibration']['clips']} clips of {r['calibration']['videos']} videos)")
    print(f"  agreement with fp32 on {a['clips']} held-out clips: top-1 {a['top1']:.4f}, top-5 overlap "
          f"{a['top5_overlap']:.4f}, logits cosine {a['logits_cosine']:.5f} (worst {a['logits_cosine_min']:.5f}), "
          f"embedding cosine {a['embedding_cosine']:.5f}, max |d softmax| {a['max_abs_dsoftmax']:.2g}")
    note = speed_note(r)
    if note:
        print(f"  {note}")
    if r["random_weights"]:
        print(f"  !! {r['note']} !!")
    print("  within budget: label with --set model.int8=" + args.output if built.passed else
          "  MISSED the budget: " + "; ".join(built.missed) + " (label refuses this graph; docs/int8.md)")
    print(json.dumps(r, sort_keys=True))
    return 0 if built.passed else 1
