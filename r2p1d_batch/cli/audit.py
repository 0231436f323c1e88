"""Device consistency audit: do OUT's labels match the model on a device?

  r2p1d audit OUT --sample 64 --backend qai-hub --device "Samsung Galaxy S24 (Family)" [--runtime tflite|qnn|onnx]
  r2p1d audit OUT --sample 64 --backend onnxruntime          # local, no account needed
  r2p1d audit OUT --backend replay --device-outputs FILE     # outputs a device produced earlier

Exit status: 0 every threshold met, 1 a threshold missed, 2 a user error (nothing to audit,
bad config, no AI Hub token, unknown device), 3 the device backend failed (job failed,
rate limit, hub unreachable).
"""
from __future__ import annotations

import argparse

from .. import config as config_mod
from .args import add_config_args, command


def add_parser(sub) -> None:
    p = command(sub, "audit", __doc__, run)
    p.add_argument("output", help="a labeling job's output root (local or s3://)")
    p.add_argument("--sample", type=int, help="clips to audit, stratified by label (audit.sample)")
    p.add_argument("--seed", type=int, help="sampling seed (audit.seed)")
    p.add_argument("--run-id", help="audit one committed run (default: all; they must share weights)")
    p.add_argument("--backend", choices=["onnxruntime", "qai-hub", "replay"], help="audit.backend")
    p.add_argument("--device", help='AI Hub device name, e.g. "Samsung Galaxy S24 (Family)"')
    p.add_argument("--runtime", choices=["tflite", "qnn", "onnx"], help="AI Hub target runtime")
    p.add_argument("--chunk-clips", type=int, help="clips per AI Hub inference job")
    p.add_argument("--profile", action="store_true", default=None, help="also run an AI Hub profile job")
    p.add_argument("--device-outputs", nargs="+", metavar="FILE",
                   help="replay: AI Hub .h5 downloads (in the order sent) or an audit's device_outputs.npz")
    add_config_args(p, "audit.thresholds.min_psnr_db=25")
    p.set_defaults(default_log_level="INFO")


def run(args: argparse.Namespace) -> int:
    top = {"output.path": args.output, "audit.sample": args.sample, "audit.seed": args.seed,
           "audit.run_id": args.run_id, "audit.backend": args.backend, "audit.device": args.device,
           "audit.runtime": args.runtime, "audit.chunk_clips": args.chunk_clips, "audit.profile": args.profile,
           "audit.device_outputs": args.device_outputs}
    cfg = config_mod.load(args.config, args.overrides, **top)
    from ..audit.job import run_audit

    result = run_audit(cfg)
    print(result.markdown)
    print(f"report: {result.report_dir}")
    return result.exit_code
