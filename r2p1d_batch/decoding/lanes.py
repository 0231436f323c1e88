"""Stage 2 on GPU clusters: two decode lanes feeding one classifier pool.

    CPU lane:   manifest rows -> DecodeStage (Ray tasks, PyAV)                  \\
                                                                                  -> union -> classifier
    NVDEC lane: manifest rows -> NvdecDecodeStage (actors, fractional GPU each)  /

The shape wired here is the first candidate of docs/gpu.md: a fractional-GPU decode actor
pool beside the CPU decode tasks. The other candidate, NVDEC inside the classifier actor (no
pixels through the object store, but decode and the model then share one process and one
schedule), is not built; the choice is left to measurement on a GPU node.

On the driver: ``decode_device`` turns ``decode.device`` into ``cpu`` (the pipeline is then exactly the
CPU path) or ``cuda`` (both lanes), and ``nvdec_rows`` sends a share of the videos to the NVDEC
lane. In a lane, every video still ends as its clip rows plus exactly one video row; a video the
NVDEC path cannot decode (decoder_choice.choose) or that fails mid-stream is decoded by PyAV
there, and its row says so (``decoder``, ``decoder_note``).

NOT YET RUN ON A GPU: the NVDEC lane's actors on a GPU node (what runs here: the lane logic with
NVDEC unavailable, and NvdecDecoder.clips with a CPU stand-in for the GPU decoder library).
"""
from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np

from . import colour
from .choice import (
    CPU,
    NVDEC,
    Availability,
    StreamFacts,
    choose,
    lossy_cpu_settings,
    nvdec_available,
    resolve_device,
)
from .pyav import VideoSource
from .sampling import ClipWindow
from .stage import DecodeStage

log = logging.getLogger("r2p1d_batch")

NVDEC_THEN_CPU = "nvdec+cpu"
PROBE_TIMEOUT_SEC = 120.0


class NvdecLane:
    """Per decode actor: the reusable GPU decoder (or why there is none), and per video the
    choice, the GPU clips, and the CPU fallback. ``decode_stage.decode_video`` calls ``open``."""

    def __init__(self, decoder=None, unavailable: str = ""):
        self.decoder = decoder  # nvdec.NvdecDecoder, or None when NVDEC is unavailable here
        self.unavailable = unavailable

    def open(self, source, local: bool) -> VideoLane:
        return VideoLane(self, source, local)


class VideoLane:
    """One video's decode in the NVDEC lane: ``clips`` yields what VideoSource.clips would, and
    ``columns`` is what the video row records about it."""

    def __init__(self, lane: NvdecLane, source, local: bool):
        self.lane, self.source, self.local = lane, source, local
        self.decoder, self.note = CPU, ""

    def columns(self) -> dict:
        return {"decoder": self.decoder, "decoder_note": self.note}

    def clips(self, video: VideoSource, windows: list[ClipWindow]) -> Iterator:
        if self.lane.decoder is None:
            self.note = f"NVDEC unavailable on this node: {self.lane.unavailable}"
            yield from video.clips(windows)
            return
        facts = StreamFacts.of(video.stream)
        choice = choose(facts)
        if choice.decoder == CPU or not self.local:
            self.note = choice.reason or "remote source: the NVDEC path reads local files only (not built for S3)"
            yield from video.clips(windows)
            return
        done: set[int] = set()
        try:
            matrix = colour.matrix_of(facts.colorspace)
            for clip in self.lane.decoder.clips(self.source, video, windows, matrix, facts.full_range):
                done.add(clip.index)
                self.decoder = NVDEC
                yield clip
            return
        except Exception as e:  # a decoder error mid-stream, a library or driver error: PyAV does the rest
            self.note = f"NVDEC failed after {len(done)} clips, CPU did the rest: {type(e).__name__}: {e}"[:500]
            log.warning("%s: %s", video.uri, self.note)
        video.container.seek(0)
        self.decoder = NVDEC_THEN_CPU if done else CPU
        yield from video.clips([w for w in windows if w.index not in done])


class NvdecDecodeStage(DecodeStage):
    """The NVDEC lane's map_batches callable class: DecodeStage with a GPU decoder per actor
    (created once, reused across videos). Where NVDEC is unavailable on the node, every video is
    decoded by PyAV and its row says why."""

    def __init__(self, cfg, run_id: str = ""):
        super().__init__(cfg, run_id)
        avail = nvdec_available()
        decoder = None
        if avail.ok:
            from .nvdec import NvdecDecoder

            try:
                decoder = NvdecDecoder(cfg.decode.nvdec.library)
            except Exception as e:
                avail = Availability(False, f"{type(e).__name__}: {e}")
        if decoder is None:
            log.warning("NVDEC decode actor without NVDEC (%s): decoding on the CPU", avail.reason)
        self.gpu = NvdecLane(decoder, avail.reason)


# -- the driver ----------------------------------------------------------------------------------
def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def probe_gpu_node() -> Availability:
    """NVDEC availability as a GPU node sees it (a tiny task holding 1/10,000 of a GPU)."""
    import ray

    ref = ray.remote(num_gpus=0.0001, num_cpus=0)(nvdec_available).remote()
    try:
        return ray.get(ref, timeout=PROBE_TIMEOUT_SEC)
    except Exception as e:  # no GPU node free to answer, or the probe died
        ray.cancel(ref, force=True)
        return Availability(False, f"the probe on a GPU node did not answer ({type(e).__name__})")


def decode_device(cfg) -> str:
    """``decode.device`` for this run on this cluster: ``cpu`` or ``cuda`` (raises DecodeDeviceError)."""
    if cfg.decode.device == "cpu":
        return "cpu"
    device = resolve_device(cfg.decode.device, cluster_gpus(), probe_gpu_node)
    lossy = lossy_cpu_settings(cfg.decode) if device == "cuda" else []
    if lossy:
        log.warning("NVDEC lane on, with %s on the CPU lane: this run mixes two pixel paths (NVDEC gives the "
                    "exact path's); set decode.scaler=exact and decode.skip_loop_filter_min_side=null",
                    ", ".join(lossy))
    return device


def nvdec_rows(n: int, share: float) -> np.ndarray:
    """Which of ``n`` rows go to the NVDEC lane (bool per row): every ``1/share``-th video, spread
    evenly through the manifest order (a static split; balancing by queue depth is to be
    measured). Row i goes when the running total ``(i + 1) * share`` passes a whole number."""
    total = np.floor(np.arange(n + 1, dtype=np.float64) * share + 1e-9)
    return np.diff(total) > 0


def split_rows(rows: list, share: float) -> tuple[list, list]:
    """(CPU lane rows, NVDEC lane rows) of a list, by ``nvdec_rows``."""
    gpu = nvdec_rows(len(rows), share)
    return [r for r, g in zip(rows, gpu) if not g], [r for r, g in zip(rows, gpu) if g]
