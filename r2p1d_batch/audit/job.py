"""run_audit(cfg): prove the labels of OUT match the model on a device. Stages numbered.

Exit codes (``AuditResult.exit_code``): 0 every threshold met, 1 a threshold missed. User
errors (nothing to audit, no AI Hub token, unknown device...) raise; the CLI maps them to 2.
"""
from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from ..classifying.weights import categories
from ..config import Config, ModelConfig
from . import results as report
from .backends import Backend, ReplayBackend, cache_dir, device_graph, make_backend
from .errors import AuditError
from .metrics import compare, summarize, topk_ids
from .redecode import VERIFIED, Redecoded, redecode
from .sample import committed_clips, sample_clips

log = logging.getLogger("r2p1d_batch.audit")


@dataclass
class AuditResult:
    audit_id: str
    passed: bool
    summary: dict
    report_dir: str
    markdown: str

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1


def new_audit_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def _replay_sample(table: pa.Table, keys: dict) -> pa.Table:
    """The clips a replayed device_outputs.npz names, in its order."""
    columns = (table.column(c).to_pylist() for c in ("run_id", "video_id", "clip_index"))
    index = {k: i for i, k in enumerate(zip(*columns))}
    rows = []
    for key, sha in zip(zip(keys["run_id"], keys["video_id"], keys["clip_index"]), keys["clip_sha"]):
        i = index.get(tuple(key))
        if i is None:
            raise AuditError(f"the replayed outputs name clip {key}, which no committed run under this output holds")
        if table.column("clip_sha")[i].as_py() != sha:
            raise AuditError(f"the replayed outputs were made from a different clip {key} (clip_sha differs)")
        rows.append(i)
    return table.take(pa.array(rows, pa.int64()))


def host_logits(clips_u8: np.ndarray, run: dict, weights_id: str, batch_size: int, storage=None) -> np.ndarray:
    """The host reference: the run's weights in PyTorch fp32 on the CPU, uint8 -> Normalize."""
    from ..classifying.classifier import ClipClassifier

    model_cfg = dict((run.get("config") or {}).get("model") or {})
    model_cfg.update(device="cpu", num_gpus=0, num_cpus=float(os.cpu_count() or 1), batch_size=batch_size)
    clf = ClipClassifier(ModelConfig.model_validate(model_cfg), storage)
    if clf.weights_id != weights_id:
        raise AuditError(f"model.weights={model_cfg.get('weights')!r} now loads {clf.weights_id}, but the run "
                         f"labeled with {weights_id}: the checkpoint changed since labeling")
    return np.concatenate([clf.logits(clips_u8[a : a + batch_size]) for a in range(0, len(clips_u8), batch_size)])


def _checks(cfg: Config, metrics: dict, host_agree: float, unverified: int, verified: int) -> list[dict]:
    t = cfg.audit.thresholds
    rows = [("unverified inputs", unverified, "<=", t.max_unverified),
            ("verified inputs", verified, ">=", 1),
            ("host top-1 == stored label", host_agree, ">=", t.min_host_label_agreement)]
    if metrics.get("clips"):
        rows += [("top-1 agreement", metrics["top1_agreement"], ">=", t.min_top1_agreement),
                 ("top-5 overlap (mean)", metrics["top5_overlap"], ">=", t.min_top5_overlap),
                 ("cosine (worst clip)", metrics["cosine_min"], ">=", t.min_cosine),
                 ("PSNR dB (worst clip)", metrics["psnr_db_min"], ">=", t.min_psnr_db)]
    out = []
    for name, value, op, threshold in rows:
        ok = value <= threshold if op == "<=" else value >= threshold
        out.append({"name": name, "value": value, "op": op, "threshold": threshold, "passed": bool(ok)})
    return out


def _tolerance_summary(checked: list[Redecoded], tolerance: tuple[int, float]) -> dict:
    """Clips verified by pixel tolerance instead of clip_sha (NVDEC-labeled, no NVDEC here)."""
    tol = [c for c in checked if c.check == "tolerance"]
    return {"clips": len(tol), "max_abs_threshold": tolerance[0], "mean_abs_threshold": tolerance[1],
            "max_abs": max((c.pixel_max_abs for c in tol), default=None),
            "mean_abs_worst": max((c.pixel_mean_abs for c in tol), default=None)}


def run_audit(cfg: Config, backend: Optional[Backend] = None) -> AuditResult:
    """Audit the labels under ``cfg.output.path`` on ``backend`` (default: the one audit.backend names)."""
    t0 = time.perf_counter()
    audit_id = new_audit_id()
    labels = np.array(categories(), dtype=object)

    # Stage 0: what was committed, with which weights; the backend (replay files name clips).
    committed = _committed(cfg)
    backend = _open_backend(cfg, committed, backend)

    # Stage 1: the sample (N of M committed clips, stratified by label), re-decoded and proven.
    sample = _sample(cfg, committed, backend, audit_id)

    # Stage 2: host reference (PyTorch, same weights, uint8 through Normalize).
    host = _host_reference(cfg, committed, sample, len(labels))

    # Stage 3: the device (float [0, 1] NCTHW; the device graph normalises inside).
    device, backend_report = _on_device(backend, sample, len(labels), cfg.audit.backend)

    # Stage 4: compare per clip, aggregate, check thresholds.
    compared = _compare(host, device, sample)
    checks = _checks(cfg, compared.metrics, compared.host_agree, len(sample.rows) - len(sample.ok), len(sample.ok))

    # Stage 5: the audit's rows (one per sampled clip), summary and device outputs, written under OUT.
    rows, problems = _audit_rows(sample, compared, host, device, backend_report, committed.weights_id, labels)
    summary = _summary(cfg, audit_id, committed, sample, compared, checks, backend_report, problems, t0)
    report_dir = report.write(cfg.output.path, audit_id, rows, summary, _device_file(sample, device, backend_report),
                              cfg.storage)
    summary["report_dir"] = report_dir
    diffs = np.abs(device - host).ravel() if sample.ok else np.zeros(0)
    return AuditResult(audit_id, summary["passed"], summary, report_dir, report.markdown(summary, diffs))


@dataclass
class _Committed:
    """Stage 0: the committed clips under OUT, their runs, and the weights that labeled them."""
    table: pa.Table
    runs: dict
    weights_id: str
    first_run: dict  # the run of the first clip: its config is the audit's model


def _committed(cfg: Config) -> _Committed:
    table, runs = committed_clips(cfg.output.path, cfg.storage, cfg.audit.run_id)
    return _Committed(table, runs, table.column("weights")[0].as_py(), runs[table.column("run_id")[0].as_py()])


def _open_backend(cfg: Config, committed: _Committed, backend: Optional[Backend]) -> Backend:
    a = cfg.audit
    spec = ((committed.first_run.get("config") or {}).get("model") or {})

    def graph():
        return device_graph(spec.get("weights", "kinetics400"), spec.get("seed", 0), committed.weights_id,
                            cache_dir(a.cache_dir), cfg.storage)

    backend = backend or make_backend(a.backend, a, graph, batch_size=a.host_batch_size)
    if hasattr(backend, "compile"):  # AI Hub: token, device and compile fail here, before the slow part
        backend.compile()
    return backend


def _pixel_tolerance(cfg: Config) -> tuple[int, float]:
    """(max, mean) |d| in pixel levels an NVDEC-labeled clip may differ by when re-decoded on the CPU."""
    t = cfg.audit.thresholds
    return t.nvdec_max_abs_px, t.nvdec_mean_abs_px


@dataclass
class _Sample:
    """Stage 1: the sampled clips, each re-decoded and checked against what was labeled."""
    table: pa.Table
    rows: list[dict]
    checked: list[Redecoded]  # one per row
    ok: list[int]  # the rows whose input is verified: only these are run
    clips_u8: np.ndarray  # their frames, (len(ok), 16, 112, 112, 3)


def _sample(cfg: Config, committed: _Committed, backend: Backend, audit_id: str) -> _Sample:
    a, table = cfg.audit, committed.table
    keys = getattr(backend, "keys", None) if isinstance(backend, ReplayBackend) else None
    sample = _replay_sample(table, keys) if keys else sample_clips(table, a.sample, a.seed)
    rows = sample.to_pylist()
    log.info("audit %s: %d of %d committed clips sampled; re-decoding from source", audit_id, len(rows), table.num_rows)
    checked: list[Redecoded] = redecode(rows, committed.runs, cfg.storage, _pixel_tolerance(cfg))
    ok = [i for i, r in enumerate(checked) if r.status in VERIFIED]
    if keys:  # the replayed file names every sampled clip: keep the verified ones
        backend.keep(ok)
    if isinstance(backend, ReplayBackend):
        backend.check(len(ok))
    clips_u8 = np.stack([checked[i].frames for i in ok]) if ok else np.zeros((0, 16, 112, 112, 3), np.uint8)
    return _Sample(sample, rows, checked, ok, clips_u8)


def _host_reference(cfg: Config, committed: _Committed, sample: _Sample, num_labels: int) -> np.ndarray:
    if not sample.ok:
        return np.zeros((0, num_labels), np.float32)
    return host_logits(sample.clips_u8, committed.first_run, committed.weights_id, cfg.audit.host_batch_size,
                       cfg.storage)


def _on_device(backend: Backend, sample: _Sample, num_labels: int, backend_name: str) -> tuple[np.ndarray, dict]:
    """The device's logits for the verified clips, and the backend's report (jobs, device, runtime)."""
    if not sample.ok:
        return np.zeros((0, num_labels), np.float32), {"backend": getattr(backend, "name", backend_name)}
    clips_01 = sample.clips_u8.transpose(0, 4, 1, 2, 3).astype(np.float32) / np.float32(255.0)
    device, backend_report = backend.run(clips_01)
    del clips_01
    return np.asarray(device, np.float32).reshape(len(sample.ok), -1), backend_report


@dataclass
class _Comparison:
    """Stage 4: host vs device per verified clip, and both vs the label the run stored."""
    per_clip: dict[str, np.ndarray]  # metrics.compare's columns
    metrics: dict  # metrics.summarize's aggregates
    host_top1: np.ndarray
    dev_top1: np.ndarray
    stored: np.ndarray  # the run's label_id
    host_match: np.ndarray  # host top-1 == stored
    host_agree: float


def _compare(host: np.ndarray, device: np.ndarray, sample: _Sample) -> _Comparison:
    ok = sample.ok
    names = ("top1_agree", "top5_overlap", "cosine", "psnr_db", "max_abs_diff")
    per_clip = compare(host, device) if ok else {k: np.zeros(0) for k in names}
    host_top1 = topk_ids(host, 1)[:, 0] if ok else np.zeros(0, int)
    dev_top1 = topk_ids(device, 1)[:, 0] if ok else np.zeros(0, int)
    stored = np.array([sample.rows[i]["label_id"] for i in ok], dtype=int)
    host_match = host_top1 == stored
    host_agree = float(host_match.mean()) if ok else 0.0
    return _Comparison(per_clip, summarize(per_clip), host_top1, dev_top1, stored, host_match, host_agree)


def _audit_rows(sample: _Sample, cmp: _Comparison, host: np.ndarray, device: np.ndarray, backend_report: dict,
                weights_id: str, labels: np.ndarray) -> tuple[list[dict], list[str]]:
    """One row per sampled clip (verified or not), and a line per problem found."""
    created = datetime.now(timezone.utc)
    slot = {i: j for j, i in enumerate(sample.ok)}
    out_rows, problems = [], []
    for i, (row, chk) in enumerate(zip(sample.rows, sample.checked)):
        j = slot.get(i)
        r = {
            "run_id": row["run_id"], "video_id": row["video_id"], "uri": row["uri"], "clip_index": row["clip_index"],
            "clip_sha": row["clip_sha"], "redecoded_sha": chk.sha, "input_status": chk.status, "input_error": chk.error,
            "decoder": row.get("decoder"), "input_check": chk.check, "pixel_max_abs_diff": chk.pixel_max_abs,
            "pixel_mean_abs_diff": chk.pixel_mean_abs,
            "source_fingerprint": row.get("source_fingerprint"), "source_fingerprint_now": chk.source_fingerprint,
            "label": row["label"], "label_id": row["label_id"],
            "backend": backend_report.get("backend"), "device": backend_report.get("device"),
            "runtime": backend_report.get("runtime"), "weights": weights_id, "created_at": created,
            "host_label": None, "host_label_id": None, "host_matches_label": None, "device_label": None,
            "device_label_id": None, "top1_agree": None, "top5_overlap": None, "cosine": None, "psnr_db": None,
            "max_abs_diff": None, "host_logits": None, "device_logits": None,
        }
        where = f"{row['video_id']}#{row['clip_index']} (run {row['run_id']})"
        if j is None:
            problems.append(f"{where}: input {chk.status}: {chk.error}")
        else:
            host_top1, dev_top1 = cmp.host_top1[j], cmp.dev_top1[j]
            r.update(
                host_label=labels[host_top1], host_label_id=int(host_top1),
                host_matches_label=bool(cmp.host_match[j]),
                device_label=labels[dev_top1], device_label_id=int(dev_top1),
                **{k: (v[j].item() if hasattr(v[j], "item") else v[j]) for k, v in cmp.per_clip.items()},
                host_logits=host[j].tolist(), device_logits=device[j].tolist(),
            )
            if not cmp.host_match[j]:
                problems.append(f"{where}: host top-1 {labels[host_top1]!r} != stored label {row['label']!r}")
            if not cmp.per_clip["top1_agree"][j]:
                problems.append(f"{where}: device top-1 {labels[dev_top1]!r} != host {labels[host_top1]!r} "
                                f"(cosine {cmp.per_clip['cosine'][j]:.4f})")
        out_rows.append(r)
    return out_rows, problems


def _summary(cfg: Config, audit_id: str, committed: _Committed, sample: _Sample, cmp: _Comparison,
             checks: list[dict], backend_report: dict, problems: list[str], t0: float) -> dict[str, Any]:
    a, ok = cfg.audit, sample.ok
    statuses: dict[str, int] = {}
    for c in sample.checked:
        statuses[c.status] = statuses.get(c.status, 0) + 1
    return {
        "audit_id": audit_id, "output": cfg.output.path, "runs": sorted(set(sample.table.column("run_id").to_pylist())),
        "weights": committed.weights_id, "passed": all(c["passed"] for c in checks), "seed": a.seed,
        "sample_requested": a.sample, "committed_clips": committed.table.num_rows, "sampled": len(sample.rows),
        "verified": len(ok), "labels_in_sample": len(set(sample.table.column("label").to_pylist())),
        "input_status": statuses, "host_label_agreement": cmp.host_agree,
        "device_label_agreement": float(np.mean(cmp.dev_top1 == cmp.stored)) if ok else 0.0,
        "metrics": cmp.metrics, "thresholds": a.thresholds.model_dump(), "checks": checks, "backend": backend_report,
        "problems": problems, "wall_sec": round(time.perf_counter() - t0, 2),
        "pixel_tolerance": _tolerance_summary(sample.checked, _pixel_tolerance(cfg)),
    }


def _device_file(sample: _Sample, device: np.ndarray, backend_report: dict) -> dict[str, np.ndarray]:
    """device_outputs.npz: the device's outputs and the clips they belong to (what --backend replay reads)."""
    rows = [sample.rows[i] for i in sample.ok]
    return {"class_probs": device, "run_id": np.array([r["run_id"] for r in rows], dtype=str),
            "video_id": np.array([r["video_id"] for r in rows], dtype=str),
            "clip_index": np.array([r["clip_index"] for r in rows], dtype=np.int64),
            "clip_sha": np.array([r["clip_sha"] for r in rows], dtype=str),
            "device": np.array(str(backend_report.get("device"))),
            "runtime": np.array(str(backend_report.get("runtime")))}
