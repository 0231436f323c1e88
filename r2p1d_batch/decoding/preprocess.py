"""Spatial preprocessing of decoded RGB frames into the model's uint8 clip pixels.

Sizes come from torchvision's preset for the weights (``weights.transforms()``), never typed
by hand. The ``exact`` scaler is the preset's own resize and centre crop: the same
``torchvision.transforms.functional`` calls on the uint8 frame, on one thread, so its pixels
equal the preset's by construction. Normalisation is not done here: it runs on the device that
runs the model.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=1)
def preset():
    """torchvision's VideoClassification preset for the Kinetics-400 weights."""
    from torchvision.models.video import R2Plus1D_18_Weights

    return R2Plus1D_18_Weights.KINETICS400_V1.transforms()


def _pair(v) -> tuple[int, int]:
    v = list(v)
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


@dataclass(frozen=True)
class FrameTransform:
    """Resize to ``resize`` (H, W) then centre-crop to ``crop`` (H, W); uint8 HWC in and out."""

    resize: tuple[int, int]
    crop: tuple[int, int]
    scaler: str = "exact"

    @classmethod
    def from_preset(cls, scaler: str = "exact") -> FrameTransform:
        p = preset()
        return cls(_pair(p.resize_size), _pair(p.crop_size), scaler)

    def crop_box(self) -> tuple[int, int]:
        # Same rounding as torchvision.transforms.functional.center_crop.
        top = int(round((self.resize[0] - self.crop[0]) / 2.0))
        left = int(round((self.resize[1] - self.crop[1]) / 2.0))
        return top, left

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        if self.scaler == "cv2":
            return self.crop_only(resize_cv2(rgb, self.resize))
        return resize_crop_exact(rgb, self.resize, self.crop)

    def crop_only(self, small: np.ndarray) -> np.ndarray:
        """Centre crop of a frame already at ``resize``."""
        top, left = self.crop_box()
        return np.ascontiguousarray(small[top : top + self.crop[0], left : left + self.crop[1]])


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch on ``n`` intra-op threads inside the block, the previous count restored after.
    Switching costs more than a per-frame resize: a no-op when the count is already ``n``."""
    import torch

    prev = torch.get_num_threads()
    if prev != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if prev != n:
            torch.set_num_threads(prev)


def one_torch_thread() -> None:
    """Run this process's torch on one thread, as a decode worker does, so resize_exact's
    torch_threads(1) never switches."""
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def preset_resize_crop(x, resize: tuple[int, int], crop: tuple[int, int] | None):
    """The preset's calls on one CHW frame tensor (uint8, or float holding integer values):
    bilinear resize without antialias, then the centre crop when ``crop`` is given."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    # One thread: torch's CPU kernel rounds differently when split over threads (~3e-5, enough
    # to flip a pixel at .5), and clip_sha must not depend on the process's thread count
    # (a Ray decode task has 1, the audit's re-decode may have more). A per-frame resize is
    # too small to split anyway: extra threads only spin against the decoder.
    with torch_threads(1):
        y = F.resize(x, list(resize), interpolation=InterpolationMode.BILINEAR, antialias=False)
    return y if crop is None else F.center_crop(y, list(crop))


def _exact(rgb: np.ndarray, resize: tuple[int, int], crop: tuple[int, int] | None) -> np.ndarray:
    import torch

    x = torch.from_numpy(rgb).permute(2, 0, 1)  # HWC view -> CHW, as the preset sees a frame
    return np.ascontiguousarray(preset_resize_crop(x, resize, crop).permute(1, 2, 0).numpy())


def resize_exact(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The preset's resize (bilinear, no antialias, uint8 in and out) of one HWC frame."""
    return _exact(rgb, size, None)


def resize_crop_exact(rgb: np.ndarray, resize: tuple[int, int], crop: tuple[int, int]) -> np.ndarray:
    """The preset's resize then centre crop of one HWC frame: its pixels exactly."""
    return _exact(rgb, resize, crop)


def resize_cv2(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """OpenCV INTER_LINEAR on uint8: same sampling grid as the preset, fixed-point maths."""
    import cv2

    return cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def resize_crop_frames(rgb, resize: tuple[int, int], crop: tuple[int, int]):
    """The preset's resize (bilinear, no antialias) and centre crop of uint8 frames (N, H, W, 3)
    on whatever device they live (the NVDEC path's GPU frames): the same torchvision calls as
    :func:`resize_crop_exact`.
    On the CPU (one thread) it equals the CPU path bit for bit (tests/test_colour.py); on CUDA
    torch's float kernel may round a pixel differently at .5: to be measured on a GPU."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    x = rgb.permute(0, 3, 1, 2)
    x = F.resize(x, list(resize), interpolation=InterpolationMode.BILINEAR, antialias=False)
    x = F.center_crop(x, list(crop))
    return x.permute(0, 2, 3, 1).contiguous()


def rotate_frames(rgb, rotation: int):
    """Frames (N, H, W, 3) turned ``rotation`` degrees counter-clockwise, as pyav._rotate does."""
    import torch

    return torch.rot90(rgb, k=rotation // 90, dims=(1, 2)).contiguous() if rotation else rgb
