"""The NVDEC decode path: the same clip windows, the same uint8 clips and clip_sha as the CPU
path (decode.VideoSource), with the frames decoded by the GPU's NVDEC engines.

    NOT YET RUN ON A GPU. Everything below ``GpuFrames`` needs a CUDA device, libnvcuvid and a
    decoder library, none of which the development machines have; it is written against the
    libraries' documented APIs and must be run and measured on a GPU node before anyone relies
    on it (docs/gpu.md: what remains). What runs on a CPU, and is tested there:
    ``packet_times`` and ``plan_frames`` (which source frame each clip slot shows, checked
    against the CPU path's own choice on real files) and the pixel maths in colour.py.

How a video goes through it (``NvdecDecoder.clips``):
1. PyAV opens and probes the source (decode.VideoSource, as the CPU path does: duration, fps,
   the clip windows) and decodes its first frame for the rotation; the stream's packets are
   read (no decoding) for their timestamps.
2. ``plan_frames`` maps every clip slot to a frame index (the frame on screen at the slot's
   instant, with the CPU path's rules for padding and truncation; anything it cannot decide the
   same way raises ``Unplannable`` and the video goes to the CPU path).
3. The GPU decoder (reused across videos: creating one costs 50-70 ms on an H100) returns
   those frames as NV12 on the GPU; colour.py converts them the way swscale does, then rotation,
   resize and crop run on the GPU; the clip comes back to the host as uint8 (T, 112, 112, 3).

Any error of the GPU path (library missing, decoder error mid-stream) raises ``NvdecError``;
decode_stage then decodes the rest of the video on the CPU and records it.
"""
from __future__ import annotations

import bisect
import logging
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Optional

from .pyav import DecodedClip, VideoSource
from .sampling import EPS, ClipWindow

log = logging.getLogger("r2p1d_batch")


class NvdecError(Exception):
    """The GPU path cannot produce this video's clips (the caller falls back to the CPU)."""


class Unplannable(NvdecError):
    """The frame plan would differ from the CPU path's choice (no timestamps, truncated stream)."""


# -- which frames (CPU, tested) ---------------------------------------------------------------
def packet_times(video: VideoSource) -> tuple[list[float], list[int]]:
    """Presentation times (seconds from the stream start) and pts of every frame of the stream,
    sorted, from the packets alone (no decoding). Rewinds the container afterwards."""
    info, pts = video.info, []
    for pkt in video.container.demux(video.stream):
        if pkt.size == 0:  # the flush packet at the end
            continue
        if pkt.pts is None:
            video.container.seek(0)
            raise Unplannable(f"{video.uri}: packets without timestamps")
        if not getattr(pkt, "is_discard", False):
            pts.append(int(pkt.pts))
    video.container.seek(0)
    pts.sort()
    return [float((p - info.start_pts) * info.time_base) for p in pts], pts


def plan_frames(windows: list[ClipWindow], times: list[float], fps: float) -> list[list[int]]:
    """For each window, the index (into ``times``, sorted) of the frame each slot shows, by the
    CPU path's rule (decode.VideoSource.clips): the last frame at or before the slot's instant
    (the first frame for instants before it); frames at or past the window end are not used;
    slots past the last usable frame repeat it when they are padding or within two frame
    durations of it, else the stream is truncated there and the CPU path decides (Unplannable)."""
    if not windows:
        return []
    window_end = windows[0].window_end
    usable = bisect.bisect_left(times, window_end - EPS)
    if usable == 0:
        raise Unplannable("no frame before the window end")
    tail = times[usable - 1]
    step = 2.0 / (fps or 1.0)
    plan = []
    for w in windows:
        slots = []
        for t in w.times:
            i = bisect.bisect_right(times, t + EPS, 0, usable) - 1
            if i == usable - 1 and t > tail + step + EPS and t < window_end - EPS:
                raise Unplannable(f"slot at {t:.3f} s is past the last frame ({tail:.3f} s): truncated stream")
            slots.append(max(i, 0))
        plan.append(slots)
    return plan


# -- the GPU frames (NOT YET RUN ON A GPU) -----------------------------------------------------
class GpuFrames:
    """One reusable GPU decoder: ``frames(source, indices)`` -> NV12 CUDA tensors, one per index
    (in the order asked). Two candidate libraries; the choice is left to measurement:

    - ``pynvvideocodec``: PyNvVideoCodec 2.x ``SimpleDecoder(src, use_device_memory=True,
      output_color_type=NATIVE)``, ``get_batch_frames_by_index``, DLPack frames, and
      ``reconfigure_decoder(src)`` to reuse the decoder for the next video (5-6 ms instead of
      50-70 ms). NV12 out, converted by colour.py: the CPU path's pixels.
    - ``torchcodec``: ``VideoDecoder(src, device="cuda")`` and ``get_frames_at(indices)``: its
      own NV12 -> RGB conversion (NPP), so pixels may differ from swscale by a level or two;
      a new decoder per video (its CUDA context and NVDEC sessions are cached inside).
    """

    def __init__(self, library: str = "auto", gpu_id: int = 0):
        self.gpu_id = gpu_id
        self.library = _pick_library(library)
        self._decoder = None
        self._source = None

    @property
    def gives_nv12(self) -> bool:
        return self.library == "pynvvideocodec"

    def frames(self, source, indices: list[int]):
        try:
            if self.library == "pynvvideocodec":
                return self._pynv(source, indices)
            return self._torchcodec(source, indices)
        except NvdecError:
            raise
        except Exception as e:  # a decoder error mid-stream, a driver error: the CPU path takes over
            self._decoder = self._source = None
            raise NvdecError(f"{self.library}: {type(e).__name__}: {e}") from e

    def _pynv(self, source, indices: list[int]):
        import PyNvVideoCodec as nvc  # noqa: N813 (the library's own name)
        import torch

        if self._decoder is None:
            self._decoder = nvc.SimpleDecoder(source, gpu_id=self.gpu_id, use_device_memory=True,
                                              output_color_type=nvc.OutputColorType.NATIVE)
        elif self._source != source:
            self._decoder.reconfigure_decoder(source)
        self._source = source
        return [torch.from_dlpack(f) for f in self._decoder.get_batch_frames_by_index(indices)]

    def _torchcodec(self, source, indices: list[int]):
        from torchcodec.decoders import VideoDecoder

        dec = VideoDecoder(source, device=f"cuda:{self.gpu_id}", dimension_order="NHWC", seek_mode="exact")
        return dec.get_frames_at(indices).data  # uint8 (N, H, W, 3) RGB on the GPU


def _pick_library(library: str) -> str:
    import importlib.util

    names = {"pynvvideocodec": "PyNvVideoCodec", "torchcodec": "torchcodec"}
    order = list(names) if library == "auto" else [library]
    for lib in order:
        if importlib.util.find_spec(names[lib]) is not None:
            return lib
    raise NvdecError(f"no NVDEC decoder library importable (decode.nvdec.library={library}; tried "
                     f"{', '.join(names[n] for n in order)})")


class NvdecDecoder:
    """The GPU path for one decode actor: clips of a video, same interface and output as
    ``VideoSource.clips``. NOT YET RUN ON A GPU (see the module doc)."""

    def __init__(self, library: str = "auto", gpu_id: int = 0, frames=None, device: Optional[str] = None):
        from .preprocess import FrameTransform

        self.gpu = frames or GpuFrames(library, gpu_id)  # or CpuNv12Frames (device="cpu")
        self.transform = FrameTransform.from_preset()
        self.device = device or f"cuda:{gpu_id}"

    def clips(self, source, video: VideoSource, windows: list[ClipWindow], matrix: str,
              full_range: bool) -> Iterator[DecodedClip]:
        import torch

        from . import colour
        from .preprocess import resize_crop_frames, rotate_frames, torch_threads

        self._first_frame(video)
        times, pts = packet_times(video)
        plan = plan_frames(windows, times, video.info.fps)
        info, fps = video.info, video.info.fps or 25.0
        coded_h = info.height if info.rotation not in (90, 270) else info.width
        coded_w = info.width if info.rotation not in (90, 270) else info.height
        for w, slots in zip(windows, plan):
            unique = sorted(set(slots))
            got = dict(zip(unique, self.gpu.frames(source, unique)))
            batch = torch.stack([got[i] for i in slots]).to(self.device)
            # On a CPU device (tests), one thread, as the CPU path resizes: clip_sha must not depend on it.
            with torch.no_grad(), torch_threads(1) if batch.device.type == "cpu" else nullcontext():
                rgb = colour.nv12_to_rgb(batch, coded_h, coded_w, matrix, full_range) if self.gpu.gives_nv12 else batch
                rgb = rotate_frames(rgb, info.rotation)
                small = resize_crop_frames(rgb, self.transform.resize, self.transform.crop)
            yield DecodedClip(
                index=w.index,
                frames=small.cpu().numpy(),
                frame_pts=[pts[i] for i in slots],
                start_sec=times[slots[0]],
                end_sec=times[slots[-1]] + 1.0 / fps,
                padded=w.padded,
            )

    @staticmethod
    def _first_frame(video: VideoSource) -> None:
        """Rotation lives in the first decoded frame's side data: decode that one frame with
        PyAV (as the CPU path does), then rewind."""
        for frame in video.container.decode(video.stream):
            video._on_first_frame(frame)  # sets info.rotation and the displayed width/height
            break
        video.container.seek(0)



class CpuNv12Frames:
    """The NVDEC path's input without a GPU: the same decoded frames as NV12, decoded by PyAV
    (H.264/HEVC/VP9 decoding is bit-exact, so these are the planes NVDEC hands out). Used by the
    audit to run the NVDEC path's own arithmetic (colour.py, resize, crop) on the CPU, and by the
    tests. ``frames(source, indices)`` with ``source`` a local path; indices in presentation order."""

    gives_nv12 = True

    def __init__(self):
        self._source, self._iter, self._pos, self._cache = None, None, -1, {}

    def frames(self, source, indices: list[int]):
        import av
        import numpy as np
        import torch

        if source != self._source or min(indices) <= self._pos - 64:
            self.close()
            self._source, self._container = source, av.open(str(source))
            self._iter, self._pos, self._cache = self._container.decode(video=0), -1, {}
        while self._pos < max(indices):
            frame = next(self._iter, None)
            if frame is None:
                raise NvdecError(f"{source}: frame {max(indices)} past the end of the stream")
            self._pos += 1
            self._cache[self._pos] = _nv12(frame, np)
            for old in [k for k in self._cache if k < self._pos - 64]:
                del self._cache[old]
        return [torch.from_numpy(self._cache[i]) for i in indices]

    def close(self) -> None:
        if self._source is not None:
            self._container.close()
            self._source = None


def _nv12(frame, np):
    """A yuv420p PyAV frame as an NV12 array (H * 3/2, W), as NVDEC lays it out (no pitch)."""
    h, w = frame.height, frame.width
    y, u, v = (np.frombuffer(p, np.uint8).reshape(-1, p.line_size) for p in frame.planes)
    out = np.empty((h + h // 2, w), np.uint8)
    out[:h] = y[:h, :w]
    out[h:] = np.stack([u[: h // 2, : w // 2], v[: h // 2, : w // 2]], -1).reshape(h // 2, w)
    return out
