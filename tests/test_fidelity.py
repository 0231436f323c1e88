"""fidelity.py: the budget's arithmetic, on arrays built to sit on either side of it."""
from __future__ import annotations

import numpy as np
import pytest

from r2p1d_batch.decoding.fidelity import BUDGET, pixel_figures, shift_figures, within

NO_SHIFT = {"max_shift_ms": 0.0}


def test_identical_is_inside_with_no_psnr():
    a = np.random.default_rng(0).integers(0, 256, (2, 4, 8, 8, 3), dtype=np.uint8)
    f = pixel_figures(a, a.copy())
    assert f == {"max_abs": 0, "mean_abs": 0.0, "p999_abs": 0.0, "psnr_db": None}
    assert within(f | NO_SHIFT)


def test_figures_of_a_known_difference():
    a = np.full((1000,), 100, np.uint8)
    b = a.copy()
    b[:10] = 110  # 1 % of pixels off by 10: mean 0.1, MSE 1.0 -> 48.13 dB
    f = pixel_figures(a, b)
    assert f["max_abs"] == 10 and f["mean_abs"] == pytest.approx(0.1)
    assert f["psnr_db"] == pytest.approx(10 * np.log10(255**2 / 1.0))
    assert within(f | NO_SHIFT)


@pytest.mark.parametrize("change,inside", [
    (lambda b: b.__setitem__(0, 255), False),  # one pixel 155 levels off: over max_abs
    (lambda b: b.__iadd__(2), False),  # every pixel 2 off: mean 2 > 1.5
    (lambda b: b.__iadd__(1), True),  # every pixel 1 off: mean 1, 48 dB
])
def test_each_limit_bites(change, inside):
    a = np.full((10_000,), 100, np.uint8)
    b = a.copy()
    change(b)
    assert within(pixel_figures(a, b) | NO_SHIFT) is inside


def test_low_psnr_alone_is_outside():
    a = np.full((10_000,), 100, np.uint8)
    b = a.copy()
    b[:150] = 180  # mean 1.2 (inside), max 80 (inside), MSE 96 -> 28 dB (outside)
    f = pixel_figures(a, b)
    assert f["mean_abs"] <= BUDGET.mean_abs and f["max_abs"] <= BUDGET.max_abs
    assert not within(f | NO_SHIFT)


def test_a_time_shift_is_never_inside():
    a = np.zeros((4,), np.uint8)
    s = shift_figures(np.array([0.0, 1 / 15, 2 / 15]), np.array([0.0, 1 / 30, 2 / 15]))
    assert s["max_shift_ms"] == pytest.approx(1000 / 30) and s["shifted_share"] == pytest.approx(1 / 3)
    assert not within(pixel_figures(a, a) | s)
    assert within(pixel_figures(a, a) | shift_figures(np.arange(3.0), np.arange(3.0)))


def test_shapes_must_match():
    with pytest.raises(ValueError, match="shape"):
        pixel_figures(np.zeros((2, 3), np.uint8), np.zeros((3, 2), np.uint8))
