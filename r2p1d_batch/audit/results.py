"""Step 5: the audit's output under OUT/audits/audit_id=<id>/:

- ``clips.parquet``: one row per sampled clip (keys run_id, video_id, clip_index join with
  OUT/clips), its input check, host and device top-1, the metrics and both logit vectors;
- ``summary.json``: aggregates, thresholds, verdict, backend report (job ids, links);
- ``summary.md``: the same for people, with a text histogram of |d| over all logits;
- ``device_outputs.npz``: the device logits with their clip keys (replayable).
"""
from __future__ import annotations

import io
import json
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..storage import filesystem, join
from .metrics import log_histogram

AUDITS_DIR = "audits"

AUDIT_CLIPS = pa.schema(
    [
        ("run_id", pa.string()),
        ("video_id", pa.string()),
        ("uri", pa.string()),
        ("clip_index", pa.int32()),
        ("clip_sha", pa.string()),  # as labeled
        ("redecoded_sha", pa.string()),  # as re-decoded now ("" when the source is unreadable)
        ("input_status", pa.string()),  # ok | sha_mismatch | source_missing | decode_error
        ("input_error", pa.string()),
        ("decoder", pa.string()),  # of the clip's video at labeling: cpu | nvdec | nvdec+cpu
        ("input_check", pa.string()),  # sha (clip_sha re-created) | tolerance (NVDEC-labeled, no NVDEC here)
        ("pixel_max_abs_diff", pa.int16()),  # tolerance check: NVDEC path vs CPU path, grey levels
        ("pixel_mean_abs_diff", pa.float64()),
        ("source_fingerprint", pa.string()),  # at labeling
        ("source_fingerprint_now", pa.string()),
        ("label", pa.string()),  # stored by the run
        ("label_id", pa.int16()),
        ("host_label", pa.string()),
        ("host_label_id", pa.int16()),
        ("host_matches_label", pa.bool_()),
        ("device_label", pa.string()),
        ("device_label_id", pa.int16()),
        ("top1_agree", pa.bool_()),  # device top-1 == host top-1
        ("top5_overlap", pa.float32()),
        ("cosine", pa.float64()),
        ("psnr_db", pa.float64()),
        ("max_abs_diff", pa.float32()),
        ("host_logits", pa.list_(pa.float32())),
        ("device_logits", pa.list_(pa.float32())),
        ("backend", pa.string()),
        ("device", pa.string()),
        ("runtime", pa.string()),
        ("weights", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return "inf" if x > 0 else ("-inf" if x < 0 else "nan")
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.generic):
        return _json_safe(x.item())
    return x


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return "inf" if v == math.inf else f"{v:.6g}"
    return str(v)


def _tolerance_lines(t: dict) -> list[str]:
    if not t.get("clips"):
        return []
    return [f"- **{t['clips']} clips were labeled from NVDEC-decoded pixels and this machine has no NVDEC**: their "
            f"clip_sha cannot be re-created, so instead of clip_sha the audit checked that the source is unchanged "
            f"(fingerprint) and compared pixels: the NVDEC path's conversion (colour.py, resize, crop; run here on the "
            f"CPU from the same decoded frames) vs the CPU path, max |d| {_fmt(t['max_abs'])} (tolerance "
            f"{t['max_abs_threshold']}), worst clip mean {_fmt(t['mean_abs_worst'])} (tolerance "
            f"{t['mean_abs_threshold']}) grey levels; the host/device comparison used the CPU path's pixels."]


def markdown(summary: dict, diffs: np.ndarray) -> str:
    """The human summary: verdict, the threshold table, inputs, jobs, a |d| histogram."""
    s, lines = summary, []
    verdict = "PASS" if s["passed"] else "FAIL"
    lines += [f"# Device consistency audit {s['audit_id']}: {verdict}", ""]
    b = s["backend"]
    lines += [f"- output: `{s['output']}`  runs: {', '.join(s['runs'])}",
              f"- weights: `{s['weights']}`"
              + ("  (RANDOM WEIGHTS: a smoke audit)" if s["weights"].startswith("random:") else ""),
              f"- backend: **{b.get('backend')}**  device: **{b.get('device')}**  runtime: **{b.get('runtime')}**",
              f"- sample: {s['sampled']} clips (seed {s['seed']}, stratified over {s['labels_in_sample']} labels); "
              f"verified inputs: {s['verified']}; {', '.join(f'{k}: {v}' for k, v in s['input_status'].items())}",
              *_tolerance_lines(s.get("pixel_tolerance") or {}),
              ""]
    lines += ["| check | value | threshold | ok |", "|---|---|---|---|"]
    for c in s["checks"]:
        ok = "yes" if c["passed"] else "**NO**"
        lines.append(f"| {c['name']} | {_fmt(c['value'])} | {c['op']} {_fmt(c['threshold'])} | {ok} |")
    m = s.get("metrics", {})
    if m.get("clips"):
        lines += ["", f"Median cosine {_fmt(m['cosine_median'])}, median PSNR {_fmt(m['psnr_db_median'])} dB, "
                      f"max |d| {_fmt(m['max_abs_diff'])} over {m['clips']} clips."]
    jobs = []
    for key, what in (("compile_job", "compile job"), ("profile", "profile job")):
        if isinstance(b.get(key), dict) and b[key].get("job_id"):
            jobs.append(f"- {what}: `{b[key]['job_id']}` {b[key].get('url', '')}")
    for j in b.get("inference_jobs") or []:
        jobs.append(f"- inference job: `{j.get('job_id')}` ({j.get('num_clips')} clips) {j.get('url', '')}")
    if jobs:
        lines += ["", "## AI Hub jobs", *jobs]
    prof = b.get("profile") or {}
    if prof.get("inference_ms") is not None:
        lines += ["", f"On-device latency {prof['inference_ms']:.2f} ms per clip, peak memory "
                      f"{_fmt(prof.get('inference_peak_memory_mib'))} MiB."]
    if diffs.size:
        hist = log_histogram(diffs)
        peak = max(c for _, c in hist) or 1
        lines += ["", f"## |device - host| over all {diffs.size} logits", "", "```"]
        lines += [f"{name:>14} {count:>8} {'#' * int(round(40 * count / peak))}" for name, count in hist]
        lines += ["```"]
    bad = s.get("problems") or []
    if bad:
        lines += ["", "## Clips to look at", ""] + [f"- {p}" for p in bad[:50]]
        if len(bad) > 50:
            lines.append(f"- ... and {len(bad) - 50} more (see clips.parquet)")
    return "\n".join(lines) + "\n"


def write(output: str, audit_id: str, rows: list[dict], summary: dict, device: dict, storage=None) -> str:
    """Write the audit's files; returns the audit directory (as a URI under ``output``)."""
    fs, root = filesystem(output, storage)
    directory = join(root.rstrip("/"), AUDITS_DIR, f"audit_id={audit_id}")
    fs.makedirs(directory, exist_ok=True)
    with fs.open(join(directory, "clips.parquet"), "wb") as f:
        pq.write_table(pa.Table.from_pylist(rows, schema=AUDIT_CLIPS), f, compression="zstd")
    if len(device["class_probs"]):
        buf = io.BytesIO()
        np.savez(buf, **device)
        with fs.open(join(directory, "device_outputs.npz"), "wb") as f:
            f.write(buf.getvalue())
    diffs = np.concatenate([np.abs(np.subtract(r["device_logits"], r["host_logits"])) for r in rows
                            if r["device_logits"] is not None] or [np.zeros(0)])
    with fs.open(join(directory, "summary.json"), "w") as f:
        json.dump(_json_safe(summary), f, indent=2, sort_keys=True, default=str)
    with fs.open(join(directory, "summary.md"), "w") as f:
        f.write(markdown(summary, diffs))
    return join(output.rstrip("/"), AUDITS_DIR, f"audit_id={audit_id}")
