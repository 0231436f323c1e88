"""Device consistency audit: do OUT's labels match the model on a device?

  python jobs/audit.py OUT --sample 64 --backend qai-hub --device "Samsung Galaxy S24 (Family)" [--runtime tflite|qnn|onnx]
  python jobs/audit.py OUT --sample 64 --backend onnxruntime          # local, no account needed
  python jobs/audit.py OUT --backend replay --device-outputs FILE     # outputs a device produced earlier

Exit status: 0 every threshold met, 1 a threshold missed, 2 a user error (nothing to audit,
bad config, no AI Hub token, unknown device), 3 the device backend failed (job failed,
rate limit, hub unreachable).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, no install

from r2p1d_batch import config as config_mod  # noqa: E402
from r2p1d_batch.audit.errors import AuditError  # noqa: E402
from r2p1d_batch.errors import USER_ERRORS  # noqa: E402

# HubError kinds that the user fixes (exit 2); the others mean the hub or a job failed (exit 3).
HUB_USER_KINDS = {"no_token", "auth", "unknown_device", "unsupported_runtime"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--config", "-c", help="YAML profile layered on configs/default.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set audit.thresholds.min_psnr_db=25 (repeatable)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    top = {"output.path": args.output, "audit.sample": args.sample, "audit.seed": args.seed,
           "audit.run_id": args.run_id, "audit.backend": args.backend, "audit.device": args.device,
           "audit.runtime": args.runtime, "audit.chunk_clips": args.chunk_clips, "audit.profile": args.profile,
           "audit.device_outputs": args.device_outputs}
    try:
        cfg = config_mod.load(args.config, args.overrides, **top)
        from r2p1d_batch.audit.run import run_audit

        result = run_audit(cfg)
    except (AuditError, *USER_ERRORS) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if type(e).__name__ == "HubError":  # imported lazily with the qai-hub backend
            print(f"error: {e}", file=sys.stderr)
            return 2 if getattr(e, "kind", "") in HUB_USER_KINDS else 3
        raise
    print(result.markdown)
    print(f"report: {result.report_dir}")
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
