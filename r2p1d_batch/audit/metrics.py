"""Per-clip agreement between a reference and a candidate set of logits. Pure numpy.

Every function takes (N, C) arrays, one row per clip, and returns one value per clip; the
aggregate over clips is ``summarize``. PSNR follows the model zoo: 20*log10(max|ref| / RMSE).
"""
from __future__ import annotations

import numpy as np


def _pair(ref: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    if ref.ndim != 2 or ref.shape != out.shape:
        raise ValueError(f"expected two (N, C) arrays of one shape, got {ref.shape} and {out.shape}")
    return ref, out


def topk_ids(logits: np.ndarray, k: int) -> np.ndarray:
    """Top-k class ids per row, best first (ties: lower id first, as classify.topk)."""
    return np.argsort(-np.asarray(logits), axis=1, kind="stable")[:, :k]


def top1_agree(ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    ref, out = _pair(ref, out)
    return topk_ids(ref, 1)[:, 0] == topk_ids(out, 1)[:, 0]


def topk_overlap(ref: np.ndarray, out: np.ndarray, k: int = 5) -> np.ndarray:
    """|top-k(ref) & top-k(out)| / k per row, order ignored."""
    ref, out = _pair(ref, out)
    a, b = topk_ids(ref, k), topk_ids(out, k)
    return np.array([len(set(x) & set(y)) / k for x, y in zip(a.tolist(), b.tolist())])


def cosine(ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    ref, out = _pair(ref, out)
    num = (ref * out).sum(axis=1)
    den = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    both_zero = (np.abs(ref).max(axis=1) == 0) & (np.abs(out).max(axis=1) == 0)
    # Two all-zero rows are the same vector; one zero row is like no other.
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(both_zero, 1.0, 0.0))


def psnr_db(ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    """20*log10(max|ref| / RMSE) per row; +inf where the rows are identical."""
    ref, out = _pair(ref, out)
    rmse = np.sqrt(np.mean((ref - out) ** 2, axis=1))
    peak = np.abs(ref).max(axis=1)
    with np.errstate(divide="ignore"):
        return np.where(rmse > 0, 20.0 * np.log10(np.maximum(peak, 1e-30) / np.where(rmse > 0, rmse, 1)), np.inf)


def max_abs_diff(ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    ref, out = _pair(ref, out)
    return np.abs(ref - out).max(axis=1)


def compare(ref: np.ndarray, out: np.ndarray) -> dict[str, np.ndarray]:
    """Every per-clip metric, keyed by its column name in the audit's Parquet."""
    return {
        "top1_agree": top1_agree(ref, out),
        "top5_overlap": topk_overlap(ref, out, 5),
        "cosine": cosine(ref, out),
        "psnr_db": psnr_db(ref, out),
        "max_abs_diff": max_abs_diff(ref, out),
    }


def summarize(per_clip: dict[str, np.ndarray]) -> dict[str, float]:
    """Aggregates the thresholds are checked against: rates are means, cosine and PSNR the
    worst clip (and the median for reading), max |d| the largest over all clips."""
    n = len(per_clip["top1_agree"])
    if n == 0:
        return {"clips": 0}
    return {
        "clips": n,
        "top1_agreement": float(np.mean(per_clip["top1_agree"])),
        "top5_overlap": float(np.mean(per_clip["top5_overlap"])),
        "cosine_min": float(np.min(per_clip["cosine"])),
        "cosine_median": float(np.median(per_clip["cosine"])),
        "psnr_db_min": float(np.min(per_clip["psnr_db"])),
        "psnr_db_median": float(np.median(per_clip["psnr_db"])),
        "max_abs_diff": float(np.max(per_clip["max_abs_diff"])),
    }


def log_histogram(diffs: np.ndarray, lo: int = -8, hi: int = 2) -> list[tuple[str, int]]:
    """Counts of |d| per decade from 1e``lo`` to 1e``hi`` (exact zeros and the tails included)."""
    d = np.abs(np.asarray(diffs, np.float64)).ravel()
    rows = [("0", int(np.sum(d == 0)))]
    nz = d[d > 0]
    rows.append((f"< 1e{lo}", int(np.sum(nz < 10.0**lo))))
    for e in range(lo, hi):
        rows.append((f"1e{e} .. 1e{e + 1}", int(np.sum((nz >= 10.0**e) & (nz < 10.0 ** (e + 1))))))
    rows.append((f">= 1e{hi}", int(np.sum(nz >= 10.0**hi))))
    return rows
