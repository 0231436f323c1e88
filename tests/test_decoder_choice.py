"""decoder_choice: the per-video NVDEC-or-CPU rule on the probe info of real synthesized files,
NVDEC's availability probe, and decode.device resolved against a cluster (no GPU here)."""
from __future__ import annotations

import logging

import av
import pytest

from r2p1d_batch.decoding.choice import (
    CPU,
    NVCUVID,
    NVDEC,
    Availability,
    DecodeDeviceError,
    StreamFacts,
    choose,
    nvdec_available,
    resolve_device,
)
from r2p1d_batch.errors import UserError

from tests.helpers.videos import make_video, make_yuv_video


def _facts(path) -> StreamFacts:
    with av.open(str(path)) as c:
        return StreamFacts.of(c.streams.video[0])


# (file name, make_video kwargs or "lossy-h264", expected decoder, words in the reason)
FILES = [
    ("h264-high.mp4", dict(w=256, h=144), NVDEC, ""),
    ("h264-bt709-full.mp4", dict(w=256, h=144, colorspace=1, color_range=2), NVDEC, ""),
    ("h264-tiny.mp4", dict(w=32, h=16), CPU, "below NVDEC's h264 minimum 48x16"),
    ("h264-lossless.mp4", dict(size=(96, 64)), CPU, "High 4:4:4 Predictive"),
    ("h264-10bit.mp4", dict(pix_fmt="yuv420p10le"), CPU, "yuv420p10le"),
    ("h264-422.mp4", dict(pix_fmt="yuv422p"), CPU, "yuv422p"),
    ("h264-444.mp4", dict(pix_fmt="yuv444p"), CPU, "yuv444p"),
    ("hevc.mp4", dict(codec="libx265", size=(256, 144)), NVDEC, ""),
    ("hevc-small.mp4", dict(codec="libx265", size=(128, 96)), CPU, "below NVDEC's hevc minimum 144x144"),
    ("vp9.mkv", dict(codec="libvpx-vp9", size=(256, 144)), NVDEC, ""),
    ("vp8.mkv", dict(codec="libvpx", size=(256, 144)), CPU, "codec vp8"),
    ("av1.mp4", dict(codec="libsvtav1", size=(256, 144)), CPU, "no AV1 in NVDEC on Hopper"),
    ("mjpeg.mkv", dict(codec="mjpeg", pix_fmt="yuvj420p"), CPU, "codec mjpeg"),
    ("ffv1.mkv", dict(codec="ffv1"), CPU, "codec ffv1"),
    ("mpeg4.mp4", dict(codec="mpeg4"), CPU, "codec mpeg4"),
]


@pytest.mark.parametrize("name,kw,decoder,why", FILES, ids=[f[0] for f in FILES])
def test_choice_on_real_files(tmp_path, name, kw, decoder, why):
    if "w" in kw:  # lossy H.264 (High profile), planes written directly
        path = make_yuv_video(tmp_path / name, kw["w"], kw["h"], colorspace=kw.get("colorspace", 0),
                              color_range=kw.get("color_range", 0), lossless=False, n=3)
    else:
        path = make_video(tmp_path / name, n_frames=5, **kw)
    f = _facts(path)
    c = choose(f)
    assert c.decoder == decoder, (f, c)
    if decoder == NVDEC:
        assert c.reason == ""
    else:
        assert why in c.reason, c.reason


def test_facts_of_a_tagged_file(tmp_path):
    f = _facts(make_yuv_video(tmp_path / "t.mp4", 256, 144, colorspace=1, color_range=2, lossless=False))
    assert (f.codec, f.width, f.height) == ("h264", 256, 144) and f.pix_fmt == "yuvj420p"  # h264 full range
    assert "4:4:4" not in f.profile and f.colorspace == 1 and f.full_range


def test_rules_without_files():
    ok = StreamFacts("h264", "High", "yuv420p", 1920, 1080)
    assert choose(ok).decoder == NVDEC
    assert "odd height 1079" in choose(StreamFacts("h264", "High", "yuv420p", 1920, 1079)).reason
    assert "above NVDEC's h264 maximum" in choose(StreamFacts("h264", "High", "yuv420p", 8192, 4320)).reason
    assert choose(StreamFacts("hevc", "Main", "yuv420p", 8192, 4320)).decoder == NVDEC
    assert "AVColorSpace=9" in choose(StreamFacts("h264", "High", "yuv420p", 1920, 1080, colorspace=9)).reason
    assert StreamFacts("h264", "High", "yuvj420p", 640, 360).full_range
    assert "High 10" in choose(StreamFacts("h264", "High 10", "yuv420p", 640, 360)).reason


def test_nvdec_available_reasons():
    def missing(name):
        raise OSError(f"{name}: cannot open shared object file: No such file or directory")

    no_cuda = nvdec_available({}, cuda=lambda: False)
    assert not no_cuda.ok and "no CUDA device" in no_cuda.reason
    caps = nvdec_available({"NVIDIA_DRIVER_CAPABILITIES": "compute,utility"}, cuda=lambda: True, load=missing)
    assert not caps.ok and NVCUVID in caps.reason and "lacks 'video'" in caps.reason
    plain = nvdec_available({}, cuda=lambda: True, load=missing)
    assert not plain.ok and NVCUVID in plain.reason and "lacks" not in plain.reason
    video = nvdec_available({"NVIDIA_DRIVER_CAPABILITIES": "compute,utility,video"}, cuda=lambda: True,
                            load=missing)
    assert "lacks" not in video.reason
    nolib = nvdec_available({}, cuda=lambda: True, load=lambda n: None, libraries=("no_such_module_xyz",))
    assert not nolib.ok and "no_such_module_xyz" in nolib.reason
    found = nvdec_available({}, cuda=lambda: True, load=lambda n: None, libraries=("no_such_module_xyz", "json"))
    assert found.ok and found.library == "json"
    # This machine: no GPU, so never available, and it says why.
    here = nvdec_available()
    assert not here.ok and here.reason


def test_resolve_device(caplog):
    assert resolve_device("cpu", 8) == "cpu"
    with caplog.at_level(logging.INFO, logger="r2p1d_batch"):
        assert resolve_device("auto", 0) == "cpu"
    assert "decode.device=auto" in caplog.text and "CPU (PyAV) only" in caplog.text
    with pytest.raises(DecodeDeviceError, match=r"decode.device=cuda but the Ray cluster has no GPU") as e:
        resolve_device("cuda", 0)
    assert isinstance(e.value, UserError) and e.value.exit_code == 2
    bad = lambda: Availability(False, f"{NVCUVID} not loadable")  # noqa: E731
    with pytest.raises(DecodeDeviceError, match="NVDEC is unavailable on the GPU nodes"):
        resolve_device("cuda", 1, bad)
    assert resolve_device("auto", 1, bad) == "cpu"
    assert resolve_device("auto", 1, lambda: Availability(True, "", "PyNvVideoCodec")) == "cuda"
    assert resolve_device("cuda", 2, lambda: Availability(True, "", "torchcodec")) == "cuda"


def test_lossy_cpu_settings_named_for_the_nvdec_warning():
    """NVDEC gives the exact path's pixels: the CPU lane's lossy settings are named, the exact
    ones (the defaults, skip_frames=unused included) are not."""
    from r2p1d_batch import config as config_mod
    from r2p1d_batch.decoding.choice import lossy_cpu_settings

    assert lossy_cpu_settings(config_mod.load().decode) == []
    cluster = config_mod.load(config_mod.CONFIG_DIR / "cluster.yaml").decode
    assert lossy_cpu_settings(cluster) == ["decode.scaler=cv2", "decode.skip_loop_filter_min_side=720"]
    nonref = config_mod.load(None, ["decode.skip_frames=nonref"]).decode
    assert lossy_cpu_settings(nonref) == ["decode.skip_frames=nonref"]
