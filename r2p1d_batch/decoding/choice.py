"""Which decoder a run and a video get: ``decode.device`` resolved against the cluster (driver),
NVDEC's availability on a node, and a pure per-video rule (NVDEC or the CPU path).

Pure where it can be (``choose`` takes a stream's facts, nothing else) so the rules are tested on
the probe info of real synthesized files without a GPU. The facts of NVDEC on Hopper (H100/H200)
that the rules encode are in /work/shared/DESIGN.md "GPU decode (NVDEC) facts"; the colour
constraints are colour.py's (what it reproduces of swscale).
"""
from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

from ..errors import UserError
from . import colour

log = logging.getLogger("r2p1d_batch")

CPU, NVDEC = "cpu", "nvdec"
NVCUVID = "libnvcuvid.so.1"

# NVDEC on Hopper: codec -> (min width, min height, max width, max height). No AV1, MPEG-4,
# MJPEG, FFV1, VP8 there (or not through the NVDEC video engines).
NVDEC_CODECS = {
    "h264": (48, 16, 4096, 4096),
    "hevc": (144, 144, 8192, 8192),
    "vp9": (128, 128, 8192, 8192),
}
# 8-bit 4:2:0 only: NVDEC has no 4:2:2 and no 10-bit H.264; 10-bit HEVC/VP9 it decodes, but
# the CPU path's 10-bit -> rgb24 conversion is another swscale path that colour.py does not
# reproduce, so those stay on the CPU too.
NVDEC_PIX_FMTS = {"yuv420p", "yuvj420p", "nv12"}
# H.264 profiles NVDEC has no decoder for (x264's lossless mode is High 4:4:4 Predictive even
# for yuv420p input).
UNSUPPORTED_PROFILE_WORDS = ("4:4:4", "4:2:2", "High 10", "Lossless")


class DecodeDeviceError(UserError):
    """decode.device cannot be honoured on this cluster (exit 2, before any work)."""


@dataclass(frozen=True)
class StreamFacts:
    """What the rule needs about a video stream (PyAV's probe; coded size, before rotation)."""

    codec: str
    profile: str
    pix_fmt: str
    width: int
    height: int
    colorspace: int = colour.AVCOL_SPC_UNSPECIFIED
    color_range: int = 0

    @classmethod
    def of(cls, stream) -> StreamFacts:
        """From a PyAV video stream (``VideoSource.stream``)."""
        cc = stream.codec_context
        pix = cc.pix_fmt or (cc.format.name if cc.format else "")
        return cls(cc.name or "", str(stream.profile or cc.profile or ""), pix or "", int(cc.width or 0),
                   int(cc.height or 0), int(cc.colorspace or 0), int(cc.color_range or 0))

    @property
    def full_range(self) -> bool:
        return colour.is_full_range(self.color_range) or self.pix_fmt.startswith("yuvj")


@dataclass(frozen=True)
class Choice:
    decoder: str  # cpu | nvdec
    reason: str = ""  # why not nvdec ("" when nvdec, or when the run decodes on the CPU only)


def choose(f: StreamFacts) -> Choice:
    """NVDEC where it decodes the stream and the GPU path gives the CPU path's pixels, else CPU."""
    if f.codec not in NVDEC_CODECS:
        why = "AV1 (no AV1 in NVDEC on Hopper)" if f.codec in ("av1", "libdav1d", "libaom-av1") else f.codec
        return Choice(CPU, f"codec {why} not decoded by NVDEC")
    if f.pix_fmt not in NVDEC_PIX_FMTS:
        return Choice(CPU, f"pixel format {f.pix_fmt or 'unknown'} (NVDEC path: 8-bit 4:2:0 only)")
    if any(w in f.profile for w in UNSUPPORTED_PROFILE_WORDS):
        return Choice(CPU, f"{f.codec} profile {f.profile!r} not decoded by NVDEC")
    min_w, min_h, max_w, max_h = NVDEC_CODECS[f.codec]
    if f.width < min_w or f.height < min_h:
        return Choice(CPU, f"{f.width}x{f.height} below NVDEC's {f.codec} minimum {min_w}x{min_h}")
    if f.width > max_w or f.height > max_h:
        return Choice(CPU, f"{f.width}x{f.height} above NVDEC's {f.codec} maximum {max_w}x{max_h}")
    if f.height % 2:
        return Choice(CPU, f"odd height {f.height} (swscale interpolates chroma there; not reproduced on the GPU)")
    if colour.matrix_of(f.colorspace) is None:
        return Choice(CPU, f"colour matrix AVColorSpace={f.colorspace} (GPU path: BT.601/BT.709 only)")
    return Choice(NVDEC)


def lossy_cpu_settings(decode) -> list[str]:
    """The CPU lane's settings (a DecodeConfig) whose pixels or frames the NVDEC lane, which
    gives the exact path's, does not reproduce: a run with both mixes two pixel paths."""
    out = [f"decode.scaler={decode.scaler}"] if decode.scaler != "exact" else []
    if decode.skip_loop_filter_min_side is not None:
        out.append(f"decode.skip_loop_filter_min_side={decode.skip_loop_filter_min_side}")
    if decode.skip_frames == "nonref":
        out.append("decode.skip_frames=nonref")
    return out


# -- NVDEC on this node ---------------------------------------------------------------------
@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""  # why not, for people
    library: str = ""  # the decoder library found


def _driver_caps_note(env: dict) -> str:
    caps = env.get("NVIDIA_DRIVER_CAPABILITIES")
    if caps is None:
        return ""
    names = {c.strip() for c in caps.split(",")}
    if "all" in names or "video" in names:
        return ""
    return (f" (NVIDIA_DRIVER_CAPABILITIES={caps} lacks 'video': the NVIDIA container runtime mounts "
            f"{NVCUVID} only with it; see infra/Dockerfile)")


def nvdec_available(env: Optional[dict] = None, *, cuda: Optional[Callable[[], bool]] = None,
                    load: Callable[[str], object] = ctypes.CDLL,
                    libraries: tuple[str, ...] = ("PyNvVideoCodec", "torchcodec")) -> Availability:
    """Can this process decode with NVDEC? torch sees a CUDA device, the driver's NVDEC library
    loads, and a decoder library imports. Never raises; ``reason`` says what is missing."""
    env = os.environ if env is None else env
    if cuda is None:
        def cuda() -> bool:
            try:
                import torch

                return bool(torch.cuda.is_available())
            except Exception:
                return False
    if not cuda():
        return Availability(False, "torch sees no CUDA device")
    try:
        load(NVCUVID)
    except OSError as e:
        return Availability(False, f"{NVCUVID} not loadable ({e}){_driver_caps_note(env)}")
    import importlib.util

    for name in libraries:
        if importlib.util.find_spec(name) is not None:
            return Availability(True, "", name)
    return Availability(False, f"no NVDEC decoder library importable (tried {', '.join(libraries)}; "
                               "GPU images install one, see docs/gpu.md)")


# -- decode.device, resolved on the driver --------------------------------------------------
def resolve_device(requested: str, cluster_gpus: float, probe: Optional[Callable[[], Availability]] = None) -> str:
    """``decode.device`` (auto | cpu | cuda) against the cluster -> ``cpu`` or ``cuda``.

    ``cluster_gpus``: GPUs in ``ray.cluster_resources()``; ``probe``: NVDEC availability on a
    GPU node (called only when there is one). ``cuda`` that cannot be honoured raises
    DecodeDeviceError (exit 2, nothing decoded); ``auto`` falls back to ``cpu`` with a log line.
    """
    if requested == "cpu":
        return "cpu"
    if cluster_gpus <= 0:
        why = "the Ray cluster has no GPU (ray.cluster_resources() lists none)"
        if requested == "cuda":
            raise DecodeDeviceError(f"decode.device=cuda but {why}; use decode.device=auto or cpu, "
                                    "or add GPU nodes (an autoscaling GPU group needs minReplicas >= 1)")
        log.info("decode.device=auto: %s; decoding on the CPU (PyAV) only", why)
        return "cpu"
    avail = probe() if probe is not None else Availability(True)
    if not avail.ok:
        if requested == "cuda":
            raise DecodeDeviceError(f"decode.device=cuda but NVDEC is unavailable on the GPU nodes: {avail.reason}")
        log.warning("decode.device=auto: NVDEC unavailable on the GPU nodes (%s); decoding on the CPU only",
                    avail.reason)
        return "cpu"
    log.info("decode.device=%s: NVDEC (%s) beside the CPU decoders", requested, avail.library or "?")
    return "cuda"
