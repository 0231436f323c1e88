"""Our uint8 clip + on-device normalisation must equal torchvision's preset on the same frames."""
import numpy as np
import pytest
import torch
from torchvision.models.video import R2Plus1D_18_Weights

from r2p1d_batch.classifying.model import Normalize
from r2p1d_batch.config import DecodeConfig, SamplingConfig
from r2p1d_batch.decoding.preprocess import FrameTransform
from r2p1d_batch.decoding.pyav import VideoSource
from r2p1d_batch.decoding.sampling import plan_clips

from tests.helpers.videos import make_video


def _frames(seed=0, t=16, h=180, w=320):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)
    # smooth regions and hard edges, like real video
    base[:, : h // 2] = (np.linspace(0, 255, w)[None, None, :, None]).astype(np.uint8)
    return base


def _preset(frames: np.ndarray) -> torch.Tensor:
    vid = torch.from_numpy(frames).permute(0, 3, 1, 2)  # T, C, H, W uint8, as read_video gives
    # On one thread, like the exact path: torch's CPU resize rounds a few pixels differently
    # when split over threads, and clip_sha must not depend on the thread count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return R2Plus1D_18_Weights.KINETICS400_V1.transforms()(vid)  # C, T, H, W float
    finally:
        torch.set_num_threads(threads)


def _ours(frames: np.ndarray, scaler="exact") -> tuple[np.ndarray, torch.Tensor]:
    tf = FrameTransform.from_preset(scaler)
    clip = np.stack([tf(f) for f in frames])
    return clip, Normalize()(torch.from_numpy(clip)[None])[0]


@pytest.mark.parametrize("shape", [(180, 320), (720, 1280), (97, 65), (128, 171), (64, 48)])
def test_exact_path_equals_torchvision_preset(shape):
    frames = _frames(t=4, h=shape[0], w=shape[1])
    _, ours = _ours(frames)
    ref = _preset(frames)
    assert ours.shape == ref.shape == (3, 4, 112, 112)
    assert torch.equal(ours, ref) or (ours - ref).abs().max().item() < 1e-6


def test_cv2_scaler_within_one_level():
    frames = _frames(t=2, h=720, w=1280)
    exact, _ = _ours(frames, "exact")
    fast, _ = _ours(frames, "cv2")
    diff = np.abs(exact.astype(int) - fast.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.1


def test_decoded_clip_equals_preset_on_decoded_frames(tmp_path):
    """End to end: the clip the decoder emits == preset(read frames) for the same frames."""
    import av

    path = make_video(tmp_path / "n.mp4", n_frames=32, fps=15, size=(320, 240), pattern="noise")
    with av.open(str(path)) as c:
        full = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    with VideoSource(str(path), "n", DecodeConfig()) as src:
        (clip, *_) = src.clips(plan_clips(SamplingConfig(), src.info.duration, src.info.fps))
    ref = _preset(full[:16])
    ours = Normalize()(torch.from_numpy(clip.frames)[None])[0]
    assert (ours - ref).abs().max().item() < 1e-6


def test_sizes_come_from_the_weights_preset():
    p = R2Plus1D_18_Weights.KINETICS400_V1.transforms()
    tf = FrameTransform.from_preset()
    assert list(tf.resize) == list(p.resize_size) and list(tf.crop) == list(p.crop_size)
