"""Export the device graph and measure it, in the spirit of the model zoo's export.py.

  python jobs/export.py --backend qai-hub --device "Samsung Galaxy S24 (Family)" --runtime qnn
      export ONNX, compile for the device, run a profile job; print on-device latency and
      memory and the jobs' ids and links
  python jobs/export.py --backend onnxruntime      # offline: local latency, host agreement

The graph is the zoo's: input `video` RGB in [0, 1] (N, 3, 16, 112, 112), normalisation
inside, output `class_probs` = logits. Weights: model.weights (kinetics400 | random | path).
Exit status: 0 done, 2 a user error (no token, unknown device, bad weights), 3 a hub failure.
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, no install

from r2p1d_batch import config as config_mod  # noqa: E402
from r2p1d_batch.errors import USER_ERRORS  # noqa: E402

HUB_USER_KINDS = {"no_token", "auth", "unknown_device", "unsupported_runtime"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", default="r2plus1d_18.onnx", help="where to write the ONNX graph")
    p.add_argument("--backend", choices=["onnxruntime", "qai-hub"], default="onnxruntime")
    p.add_argument("--device", help='AI Hub device name (audit.device), e.g. "Samsung Galaxy S24 (Family)"')
    p.add_argument("--runtime", choices=["tflite", "qnn", "onnx"], help="AI Hub target runtime (audit.runtime)")
    p.add_argument("--runs", type=int, default=5, help="onnxruntime: timed runs of one clip")
    p.add_argument("--json", dest="json_out", help="also write the results (job ids, links, latency) here")
    p.add_argument("--config", "-c", help="YAML profile layered on configs/default.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set model.weights=random")
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p.parse_args(argv)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def export(cfg, path: Path) -> tuple[dict, object]:
    import torch

    from r2p1d_batch.export import export_onnx
    from r2p1d_batch.model import load_model

    loaded = load_model(cfg.model.weights, cfg.model.seed, cfg.storage)
    t0 = time.perf_counter()
    export_onnx(loaded.module, path)
    info = {"onnx": str(path), "weights": loaded.weights_id, "torch": torch.__version__,
            "export_sec": round(time.perf_counter() - t0, 1), "onnx_mib": round(path.stat().st_size / 2**20, 1)}
    print(f"exported {info['weights']} -> {path} ({info['onnx_mib']} MiB) in {info['export_sec']} s")
    return info, loaded.module


def local(path: Path, module, runs: int) -> dict:
    """ONNX Runtime latency per clip on this CPU, and agreement with PyTorch eager."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from r2p1d_batch.export import DeviceGraph, cpu_session
    from r2p1d_batch.audit.metrics import compare

    sess = cpu_session(path)
    clip = np.random.default_rng(0).random((1, 3, 16, 112, 112), dtype=np.float32)
    out = sess.run(["class_probs"], {"video": clip})[0]  # warm-up
    times = []
    for _ in range(max(1, runs)):
        t0 = time.perf_counter()
        sess.run(["class_probs"], {"video": clip})
        times.append(1000 * (time.perf_counter() - t0))
    t0 = time.perf_counter()
    with torch.inference_mode():
        ref = DeviceGraph(module).eval()(torch.from_numpy(clip)).numpy()
    torch_ms = 1000 * (time.perf_counter() - t0)
    m = compare(ref, out)
    res = {"backend": "onnxruntime", "runtime": f"onnxruntime-{ort.__version__}-cpu",
           "ms_per_clip_median": round(float(np.median(times)), 1), "ms_per_clip_min": round(min(times), 1),
           "torch_eager_ms_one_clip": round(torch_ms, 1), "max_abs_diff_vs_torch": float(m["max_abs_diff"][0]),
           "psnr_db_vs_torch": float(m["psnr_db"][0]), "peak_rss_mib": round(_peak_rss_mib(), 0)}
    print(f"onnxruntime (this CPU): {res['ms_per_clip_median']} ms per clip (median of {runs}; min "
          f"{res['ms_per_clip_min']}); torch eager {res['torch_eager_ms_one_clip']} ms; "
          f"max |d| vs torch {res['max_abs_diff_vs_torch']:.2e}, PSNR {res['psnr_db_vs_torch']:.1f} dB; "
          f"peak RSS {res['peak_rss_mib']:.0f} MiB")
    return res


def on_device(path: Path, device: str, runtime: str) -> dict:
    from r2p1d_batch.audit.hub import HubBackend

    hub = HubBackend(path, device, runtime, profile=True)
    job = hub.compile().get_producer()  # the compile job that made the target model
    res = {"backend": "qai-hub", "device": device, "runtime": runtime, "compile_options": hub.compile_options,
           "compile_job": {"job_id": job.job_id, "url": job.url} if job else {"job_id": None, "url": None},
           "profile": hub.profile()}
    p = res["profile"]
    print(f"compile job {res['compile_job']['job_id']}: {res['compile_job']['url']}")
    print(f"profile job {p['job_id']}: {p['url']}")
    print(f"on {device} ({runtime}): {p['inference_ms']} ms per clip, peak memory "
          f"{p['inference_peak_memory_mib']:.1f} MiB, first load {p['first_load_ms']} ms")
    return res


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_mod.load(args.config, args.overrides, **{"audit.device": args.device, "audit.runtime": args.runtime})
        path = Path(args.onnx)
        path.parent.mkdir(parents=True, exist_ok=True)
        info, module = export(cfg, path)
        if args.backend == "onnxruntime":
            info.update(local(path, module, args.runs))
        else:
            info.update(on_device(path, cfg.audit.device, cfg.audit.runtime))
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if type(e).__name__ == "HubError":
            print(f"error: {e}", file=sys.stderr)
            return 2 if getattr(e, "kind", "") in HUB_USER_KINDS else 3
        raise
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(info, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
