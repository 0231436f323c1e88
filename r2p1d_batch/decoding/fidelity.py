"""The fidelity budget: how far a cheaper decode setting may move the pixels the model sees from
the preset-exact path's, and the figures that decide it. Pure numpy, no decoding here.

Why these numbers: the inputs are lossy already. H.264 at CRF 23 (typical web/camera video) is
itself 35 / 41 / 43 dB PSNR from its source at the model's 112x112 crop at 360p / 720p / 1080p,
mean 1.9 / 1.3 / 1.2 grey levels (``r2p1d bench --only levers``, the bench's content), so a
setting held to >= 40 dB and <= 1.5 levels moves pixels about as much as the encoder already did. The per-pixel max
is loose on purpose (80 levels): it is set by a handful of pixels on hard saturated edges, and
the two settings that matter differ there by tens of levels while the mean moves by ~1. Frame
choice is strict: a setting may not show another frame than the exact path does (no timestamp
shift); those that do are reported with their shift, never inside the budget.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Budget:
    max_abs: int = 80  # grey levels, any pixel of any clip
    mean_abs: float = 1.5  # grey levels, over every pixel of every clip
    min_psnr_db: float = 40.0
    max_shift_ms: float = 0.0  # a clip slot shows the frame the exact path shows


BUDGET = Budget()


def pixel_figures(exact: np.ndarray, other: np.ndarray) -> dict:
    """Difference of two uint8 arrays of the same clips: max, mean and 99.9th percentile of
    |d| in grey levels, and PSNR in dB (None when identical: infinite)."""
    if exact.shape != other.shape:
        raise ValueError(f"clips differ in shape: {exact.shape} vs {other.shape}")
    d = np.abs(exact.astype(np.int16) - other.astype(np.int16))
    mse = float(np.mean(d.astype(np.float64) ** 2))
    return {"max_abs": int(d.max()), "mean_abs": float(d.mean()), "p999_abs": float(np.percentile(d, 99.9)),
            "psnr_db": None if mse == 0 else 10 * math.log10(255.0**2 / mse)}


def shift_figures(exact_times: np.ndarray, other_times: np.ndarray) -> dict:
    """How far in time the frames a setting shows are from the exact path's, slot by slot
    (seconds in, milliseconds out), and the share of slots that show another frame."""
    d = np.abs(np.asarray(other_times, float) - np.asarray(exact_times, float)) * 1000.0
    return {"max_shift_ms": float(d.max(initial=0.0)), "mean_shift_ms": float(d.mean()) if d.size else 0.0,
            "shifted_share": float((d > 1e-6).mean()) if d.size else 0.0}


def within(figures: dict, budget: Budget = BUDGET) -> bool:
    """Inside ``budget``: pixel and shift figures (``pixel_figures`` | ``shift_figures``)."""
    psnr = figures["psnr_db"]
    return (figures["max_abs"] <= budget.max_abs and figures["mean_abs"] <= budget.mean_abs
            and (psnr is None or psnr >= budget.min_psnr_db) and figures["max_shift_ms"] <= budget.max_shift_ms)


def describe(budget: Budget = BUDGET) -> dict:
    return asdict(budget)
