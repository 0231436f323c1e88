"""Export the device graph and measure it, in the spirit of the model zoo's export.py.

  r2p1d export --backend qai-hub --device "Samsung Galaxy S24 (Family)" --runtime qnn
      export ONNX, compile for the device, run a profile job; print on-device latency and
      memory and the jobs' ids and links
  r2p1d export --backend onnxruntime      # offline: local latency, host agreement

The graph is the zoo's: input `video` RGB in [0, 1] (N, 3, 16, 112, 112), normalisation
inside, output `class_probs` = logits. Weights: model.weights (kinetics400 | random | path).
Exit status: 0 done, 2 a user error (no token, unknown device, bad weights), 3 a hub failure.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import config as config_mod
from .args import add_config_args, command


def add_parser(sub) -> None:
    p = command(sub, "export", __doc__, run)
    p.add_argument("--onnx", default="r2plus1d_18.onnx", help="where to write the ONNX graph")
    p.add_argument("--backend", choices=["onnxruntime", "qai-hub"], default="onnxruntime")
    p.add_argument("--device", help='AI Hub device name (audit.device), e.g. "Samsung Galaxy S24 (Family)"')
    p.add_argument("--runtime", choices=["tflite", "qnn", "onnx"], help="AI Hub target runtime (audit.runtime)")
    p.add_argument("--runs", type=int, default=5, help="onnxruntime: timed runs of one clip")
    p.add_argument("--json", dest="json_out", help="also write the results (job ids, links, latency) here")
    add_config_args(p)


def run(args: argparse.Namespace) -> int:
    from ..audit.export_measure import export_graph, measure_onnxruntime, on_device

    cfg = config_mod.load(args.config, args.overrides, **{"audit.device": args.device, "audit.runtime": args.runtime})
    path = Path(args.onnx)
    path.parent.mkdir(parents=True, exist_ok=True)
    info, module = export_graph(cfg, path)
    print_export(info, path)
    if args.backend == "onnxruntime":
        res = measure_onnxruntime(path, module, args.runs)
        print_onnxruntime(res, args.runs)
    else:
        res = on_device(path, cfg.audit.device, cfg.audit.runtime)
        print_on_device(res)
    info.update(res)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(info, indent=2, default=str))
    return 0


def print_export(info: dict, path: Path) -> None:
    print(f"exported {info['weights']} -> {path} ({info['onnx_mib']} MiB) in {info['export_sec']} s")


def print_onnxruntime(res: dict, runs: int) -> None:
    print(f"onnxruntime (this CPU): {res['ms_per_clip_median']} ms per clip (median of {runs}; min "
          f"{res['ms_per_clip_min']}); torch eager {res['torch_eager_ms_one_clip']} ms; "
          f"max |d| vs torch {res['max_abs_diff_vs_torch']:.2e}, PSNR {res['psnr_db_vs_torch']:.1f} dB; "
          f"peak RSS {res['peak_rss_mib']:.0f} MiB")


def print_on_device(res: dict) -> None:
    p = res["profile"]
    print(f"compile job {res['compile_job']['job_id']}: {res['compile_job']['url']}")
    print(f"profile job {p['job_id']}: {p['url']}")
    print(f"on {res['device']} ({res['runtime']}): {p['inference_ms']} ms per clip, peak memory "
          f"{p['inference_peak_memory_mib']:.1f} MiB, first load {p['first_load_ms']} ms")
