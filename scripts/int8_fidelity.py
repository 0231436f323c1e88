"""int8 vs fp32 on a model with real margins: r2plus1d_18 trained here, in minutes, on a synthetic
task, then quantized as `r2p1d quantize` does (classifying/int8.build) with each option ORT offers.

Random weights have no margins (every class near 1/400), so their top-1 agreement says nothing;
the Kinetics weights cannot be downloaded on the development machines. This task has margins:
8 classes, a square or a disc moving in one of 4 directions over noise, at a random position and
speed. The network keeps its random stem, layer1 and layer2 (their outputs are computed once per
clip) and trains layer3, layer4 and a new 8-way head, with BatchNorm adapting, on 8-class cross
entropy; the 400-way fc of the graph holds the 8 trained rows and zeros, so the graph has the job's
exact shape. Then, per variant, ORT static quantization on 16 calibration clips and the
agreement with fp32 on 64 held-out clips (other seeds).

  .venv/bin/python scripts/int8_fidelity.py [--out docs/int8-fidelity.json] [--steps 150]

Figures are this task's, not Kinetics': a user measures their own weights with `r2p1d quantize`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from r2p1d_batch import config  # noqa: E402
from r2p1d_batch.classifying import int8  # noqa: E402
from r2p1d_batch.classifying.model import Normalize, load_model  # noqa: E402

CLASSES = 8
T, H, W = 16, 112, 112
DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1))


def clips(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 clips (N, T, H, W, 3) and their classes: shape (square, disc) x direction."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 90, (n, T, H, W, 3), dtype=np.uint8)
    y = rng.integers(0, CLASSES, n)
    yy, xx = np.mgrid[:H, :W]
    for i in range(n):
        disc, (dx, dy) = y[i] >= 4, DIRECTIONS[y[i] % 4]
        r = rng.integers(8, 16)
        speed = rng.uniform(1.5, 3.5)
        cx, cy = rng.uniform(30, 82, 2)
        colour = rng.integers(120, 256, 3)
        for t in range(T):
            px, py = cx + dx * speed * (t - T / 2), cy + dy * speed * (t - T / 2)
            if disc:
                mask = (xx - px) ** 2 + (yy - py) ** 2 <= r * r
            else:
                mask = (abs(xx - px) <= r) & (abs(yy - py) <= r)
            x[i, t][mask] = colour
    return x, y


def train(steps: int, seed: int = 0) -> tuple[torch.nn.Module, float]:
    """(r2plus1d_18 with 400 outputs, the first 8 trained; held-out accuracy of the 8-way head)."""
    torch.manual_seed(seed)
    net = load_model("random", seed).module
    norm = Normalize()
    xtr, ytr = clips(256, seed + 1)
    with torch.inference_mode():  # the frozen front, once per clip
        front = torch.cat([net.layer2(net.layer1(net.stem(norm(torch.from_numpy(xtr[i:i + 8])))))
                           for i in range(0, len(xtr), 8)])
    head = torch.nn.Linear(512, CLASSES)
    body = torch.nn.Sequential(net.layer3, net.layer4)
    params = [*body.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    target = torch.from_numpy(ytr)
    body.train()
    for step in range(steps):
        idx = torch.randint(0, len(front), (16,))
        logits = head(net.avgpool(body(front[idx])).flatten(1))
        loss = torch.nn.functional.cross_entropy(logits, target[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0:
            print(f"  step {step}: loss {loss.item():.3f}", flush=True)
    body.eval()
    with torch.no_grad():  # the 8 trained rows in the 400-way fc; the rest never wins
        net.fc.weight.zero_()
        net.fc.bias.fill_(-10.0)
        net.fc.weight[:CLASSES] = head.weight
        net.fc.bias[:CLASSES] = head.bias
    xte, yte = clips(64, seed + 2)
    with torch.inference_mode():
        pred = torch.cat([net(norm(torch.from_numpy(xte[i:i + 8]))) for i in range(0, 64, 8)]).argmax(1).numpy()
    return net.eval(), float((pred == yte).mean())


VARIANTS = {  # name: quantize.* overrides (the defaults: entropy, per-channel, head fp32, no reduce_range)
    "default (entropy, per-channel, fc fp32)": [],
    "minmax": ["quantize.method=minmax"],
    "percentile": ["quantize.method=percentile"],
    "fc int8 too": ["quantize.head_fp32=false"],
    "per-tensor weights": ["quantize.per_channel=false"],
    "reduce_range (7-bit weights)": ["quantize.reduce_range=true"],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/int8-fidelity.json")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    t0 = time.perf_counter()
    net, accuracy = train(args.steps)
    train_sec = time.perf_counter() - t0
    print(f"trained in {train_sec:.0f} s: held-out accuracy {accuracy:.3f} on the 8-way task", flush=True)
    cal, _ = clips(16, 101)
    hold, _ = clips(64, 202)
    with torch.inference_mode():  # fp32's own confidence on the held-out clips: the margins int8 must keep
        norm = Normalize()
        probs = torch.cat([torch.softmax(net(norm(torch.from_numpy(hold[i:i + 8]))), 1) for i in range(0, 64, 8)])
    top2 = np.sort(probs.numpy(), 1)[:, -2:]
    margins = {"median_top1_prob": float(np.median(top2[:, 1])),
               "median_top1_minus_top2": float(np.median(top2[:, 1] - top2[:, 0])),
               "min_top1_minus_top2": float((top2[:, 1] - top2[:, 0]).min())}
    print(f"fp32 margins on the held-out clips: {margins}", flush=True)
    rows = []
    for name, overrides in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        q = config.load(None, overrides).quantize
        built = int8.build(net, "trained-here:moving-shapes", cal, hold, f"/tmp/r2p1d-int8-fidelity/{len(rows)}", q)
        a, s = built.report["agreement"], built.report["speed"]
        rows.append({"variant": name, **a, "passed": built.passed, "missed": built.missed,
                     "int8_vs_fp32": s["int8_clips_per_s"] / s["fp32_clips_per_s"],
                     "build_sec": built.report["build_sec"]})
        print(f"{name:42s} top-1 {a['top1']:.4f}  top-5 {a['top5_overlap']:.4f}  logits cos {a['logits_cosine']:.5f} "
              f"(min {a['logits_cosine_min']:.5f})  emb cos {a['embedding_cosine']:.5f}  "
              f"max|dp| {a['max_abs_dsoftmax']:.3f}"
              f"  {rows[-1]['int8_vs_fp32']:.2f}x  {'ok' if built.passed else 'MISSED ' + '; '.join(built.missed)}",
              flush=True)
    out = {"task": "8 classes: square/disc x 4 directions over noise, 16x112x112", "train_steps": args.steps,
           "train_sec": round(train_sec), "fp32_accuracy": accuracy, "margins": margins,
           "calibration_clips": len(cal), "holdout_clips": len(hold), "cpu": int8.cpu_isa(), "variants": rows}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
