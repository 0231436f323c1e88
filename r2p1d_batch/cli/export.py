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
    if args.backend == "onnxruntime":
        info.update(measure_onnxruntime(path, module, args.runs))
    else:
        info.update(on_device(path, cfg.audit.device, cfg.audit.runtime))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(info, indent=2, default=str))
    return 0
