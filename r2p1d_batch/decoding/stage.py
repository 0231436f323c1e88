"""Stage 2: decode + clip sampling, as a Ray map_batches function (1:N, one manifest row in,
N clip rows and exactly one video row out). Every failure becomes the video's error row."""
from __future__ import annotations

import time
import traceback
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Optional

import pyarrow as pa

from .. import schema
from ..config import Config
from ..storage import STORAGE_ERRORS, check_protocol, error_kind, filesystem, fingerprint, is_local
from .faults import CRASHES_BEFORE_ERROR, CrashLedger, Deadline, test_hooks
from .preprocess import one_torch_thread, preset
from .pyav import DecodeError, VideoSource
from .sampling import ShortVideoError, plan_clips


def _video_row(row: dict, **fields) -> dict:
    return {"kind": "video", "video_id": row["video_id"], "uri": row["uri"], **fields}


def decode_video(row: dict, cfg: Config, ledger: Optional[CrashLedger] = None, gpu=None) -> Iterator[dict]:
    """One manifest row -> its clip rows, then exactly one video row (ok or error).
    ``gpu``: the NVDEC lane's per-actor decoder (decode_lanes.NvdecLane); None: PyAV only."""
    ledger = ledger or CrashLedger("")
    t0 = time.perf_counter()
    uri, got = row["uri"], _Progress()
    deadline = Deadline(cfg.decode.timeout_sec, uri)
    try:
        try:  # the inner finally stops the clock before any handler below runs
            deadline.resume()
            yield from _clip_rows(row, cfg, ledger, gpu, deadline, got)
            status = dict(status="ok", error_class="", error="")
        finally:
            deadline.pause()
    except Exception as e:
        status = _error_status(e, uri)
    if got.noted:
        ledger.end(row["video_id"])
    decoder = got.lane.columns() if got.lane else {"decoder": "cpu", "decoder_note": ""}
    yield _video_row(row, num_clips=got.emitted, decode_sec=time.perf_counter() - t0, **got.meta, **status, **decoder)


@dataclass
class _Progress:
    """How far one video got: its video row reports this, whether it ended ok or in an error."""
    emitted: int = 0  # clip rows yielded
    meta: dict = field(default_factory=dict)  # source size and fingerprint, then the stream's properties
    noted: bool = False  # the attempt is in the crash ledger (to be ended)
    lane: Any = None  # the NVDEC lane's decoder for this video, when it took the video


def _clip_rows(row: dict, cfg: Config, ledger: CrashLedger, gpu, deadline: Deadline, got: _Progress
               ) -> Iterator[dict]:
    """The video's clip rows; raises on any failure (decode_video maps it to the error row).
    ``deadline``'s clock runs except while a row is out with the consumer."""
    uri = row["uri"]
    target, per_clip_sleep, got.noted = _test_hook(row, ledger, deadline)
    check_protocol(target, cfg.storage)  # storage.allowed_protocols: no request for any other URL
    fs, path = _stat(target, uri, cfg, got.meta)
    # From here on native code (FFmpeg) runs: note the attempt in the crash ledger.
    got.noted = got.noted or _note_attempt(ledger, row, deadline)
    # Here, not per task: a row that fails its stat never imports torch. The imports (seconds
    # in a fresh worker on a loaded node) are set-up, not decode time: off the clock.
    with deadline.off_clock():
        one_torch_thread()
        preset()  # torchvision's preset, which VideoSource's transform reads
    # Remote objects are streamed: PyAV reads through a file object doing ranged GETs of
    # storage.block_size_mb (one block held), so a few clips never fetch the whole object.
    src = nullcontext(path) if is_local(target) else fs.open(path, "rb")
    with src as f, VideoSource(f, uri, cfg.decode) as video:
        windows = plan_clips(
            cfg.sampling, video.info.duration, video.info.fps, row.get("start_sec"), row.get("end_sec")
        )
        got.lane = gpu.open(f, is_local(target)) if gpu is not None else None
        for clip in (got.lane.clips(video, windows) if got.lane else video.clips(windows)):
            got.emitted += 1
            if per_clip_sleep:
                time.sleep(per_clip_sleep)
            deadline.pause()
            yield _clip_row(row, clip)
            deadline.resume()
        info = video.info
    got.meta.update(
        duration_sec=info.duration, fps=info.fps, width=info.width, height=info.height,
        rotation=info.rotation, codec=info.codec, pix_fmt=info.pix_fmt,
    )
    if got.emitted == 0:
        raise DecodeError(f"{uri}: no clip could be decoded", "NoFrames")


def _test_hook(row: dict, ledger: CrashLedger, deadline: Deadline) -> tuple[str, float, bool]:
    """(the file to read, seconds to sleep per clip, attempt noted): a test's fault injection when
    R2P1D_TEST_HOOKS=1 (it may crash natively, so the attempt is noted first); else (uri, 0, False)."""
    hooks = test_hooks()
    if not hooks:
        return row["uri"], 0.0, False
    hook = hooks.parse(row["uri"])
    noted = _note_attempt(ledger, row, deadline)
    return hook.target, hooks.run(hook), noted


def _stat(target: str, uri: str, cfg: Config, meta: dict) -> tuple[Any, str]:
    """(filesystem, path) of an existing, non-empty source; its size and fingerprint go into ``meta``."""
    fs, path = filesystem(target, cfg.storage)
    st = fs.info(path)  # a missing/forbidden object raises OSError: mapped by _error_status
    meta.update(source_size=st.get("size"), source_fingerprint=fingerprint(st))
    if not st.get("size"):
        raise DecodeError(f"{uri}: file is empty (0 bytes)", "EmptyFile")
    return fs, path


def _clip_row(row: dict, clip) -> dict:
    return {
        "kind": "clip",
        "video_id": row["video_id"],
        "uri": row["uri"],
        "clip_index": clip.index,
        "start_sec": clip.start_sec,
        "end_sec": clip.end_sec,
        "frame_pts": clip.frame_pts,
        "padded_frames": clip.padded,
        "clip_sha": clip.sha,
        "frames": clip.frames.tobytes(),
    }


def _error_status(e: Exception, uri: str) -> dict:
    """The video row's status columns for the error that ended its decode."""
    if isinstance(e, DecodeError):
        return dict(status="error", error_class=e.kind, error=str(e))
    if isinstance(e, ShortVideoError):
        return dict(status="error", error_class="ShortVideo", error=f"{uri}: {e}")
    if isinstance(e, STORAGE_ERRORS):  # not found, access denied, retries exhausted (S3 message kept)
        error_class, message = error_kind(e, uri)
        return dict(status="error", error_class=error_class, error=message)
    if isinstance(e, ValueError):  # e.g. start_sec past the end
        return dict(status="error", error_class="BadWindow", error=f"{uri}: {e}")
    # A bug or an unexpected library error: still a row, with a trace (called while it is handled;
    # limit: decode_video, _clip_rows and the two outermost frames below them).
    tb = traceback.format_exc(limit=4).strip().splitlines()[-3:]
    return dict(status="error", error_class=type(e).__name__, error=f"{uri}: {e} | {' / '.join(tb)}")


def _note_attempt(ledger: CrashLedger, row: dict, deadline: Deadline) -> bool:
    """Note this attempt in the crash ledger; a video whose decoder already died
    CRASHES_BEFORE_ERROR times is not decoded again but becomes an error row. Off the deadline's
    clock: the ledger's calls are Ray's KV store (a fresh worker's first one can take seconds on
    a loaded node), set-up rather than decode time, and not our code for a SIGALRM to land in."""
    with deadline.off_clock():
        crashed = ledger.begin(row["video_id"])
    if crashed >= CRASHES_BEFORE_ERROR:
        ledger.end(row["video_id"])
        raise DecodeError(f"{row['uri']}: the decoder process died {crashed} times on this video "
                          "(native crash or kill); not retried", "DecoderCrashed")
    return True


def _table(rows: list[dict], sch: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=sch)


# A video's clips are held back in the decode task until its video row says how it ended: a
# video whose decode fails half-way then sends no clip on at all (the workers write clips before
# the driver sees the video row). Up to this many clips, ~37 MiB of uint8 pixels per decode task
# (588 KiB each); past it a long video streams as before, and if it then fails, the driver drops
# its clips from the written files at commit (runs/writer.py): rare, and repaired there.
HOLD_CLIPS = 64


class DecodeStage:
    """map_batches fn: manifest rows in, blocks of at most ``clips_per_block`` rows out."""

    gpu = None  # decode_lanes.NvdecDecodeStage sets its NVDEC lane here

    def __init__(self, cfg: Config, run_id: str = "", hold_clips: int = HOLD_CLIPS):
        self.cfg, self.run_id, self.hold_clips = cfg, run_id, hold_clips

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        buf: list[dict] = []  # rows ready to go, in order
        clips = 0
        ledger = CrashLedger(self.run_id)
        for row in batch.to_pylist():
            for out in self._released(decode_video(row, self.cfg, ledger, self.gpu)):
                buf.append(out)
                # Only clips fill a block (588 KiB each); video rows are a few hundred bytes and
                # ride along, so a task of error rows sends one block, not one per 8 rows.
                clips += out["kind"] == "clip"
                if clips >= self.cfg.decode.clips_per_block:
                    yield _table(buf, schema.DECODED)
                    buf, clips = [], 0
        if buf:
            yield _table(buf, schema.DECODED)

    def _released(self, rows: Iterator[dict]) -> Iterator[dict]:
        """One video's rows as they may leave the task: its clips held until its video row,
        then sent on if it is ok and dropped if not, unless there were more than
        ``hold_clips`` (then they stream). The video row's num_clips counts the clips sent on."""
        held: list[dict] = []
        sent = 0
        for r in rows:
            if r["kind"] == "clip":
                if sent or len(held) >= self.hold_clips:  # past the bound: stream
                    yield from held
                    sent += len(held) + 1
                    held = []
                    yield r
                else:
                    held.append(r)
                continue
            if r["status"] == "ok":
                yield from held
                sent += len(held)
            yield {**r, "num_clips": sent}
            held, sent = [], 0
