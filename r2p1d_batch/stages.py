"""Ray adapters around the pure stages: per-video decode (every failure becomes a row) and
the classifier actor (a callable class: model set-up in __init__, inference in __call__)."""
from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from contextlib import nullcontext
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa

from . import schema
from .classify import ClipClassifier
from .config import Config
from .decode import DecodeError, VideoSource
from .embeddings import embedding_array
from .preprocess import FrameTransform, one_torch_thread
from .sampling import ShortVideoError, plan_clips
from .storage import STORAGE_ERRORS, error_kind, filesystem, fingerprint, is_local


def _video_row(row: dict, **fields) -> dict:
    return {"kind": "video", "video_id": row["video_id"], "uri": row["uri"], **fields}


# -- fault-injection hooks (tests only) ------------------------------------------------------
# With R2P1D_TEST_HOOKS=1 in the workers' environment, a URI "testhook:ACTION[=ARG][:TARGET]"
# is decoded as TARGET after ACTION: segv (the process dies natively), sleep=S (hangs S s),
# slow=S (S s per clip, so a test can kill a worker mid-video). Without the variable such a
# URI is just an unknown protocol (an error row).
TEST_HOOKS_ENV = "R2P1D_TEST_HOOKS"


def split_test_hook(uri: str) -> tuple[str, str, str]:
    """(action, arg, target uri); ("", "", uri) unless hooks are enabled."""
    if not uri.startswith("testhook:") or os.environ.get(TEST_HOOKS_ENV) != "1":
        return "", "", uri
    action, _, target = uri[len("testhook:"):].partition(":")
    name, _, arg = action.partition("=")
    return name, arg, target


def _run_hook(action: str, arg: str) -> float:
    if action == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif action == "sleep":
        time.sleep(float(arg))
    return float(arg) if action == "slow" else 0.0


# -- per-video time limit ---------------------------------------------------------------------
class DecodeTimeout(DecodeError):
    kind = "Timeout"


class _Deadline:
    """decode.timeout_sec for one video, counting decode time only.

    In the worker's main thread a SIGALRM interrupts a decode stuck between Python steps (a
    pathological stream, a hung read); the timer is paused while the generator is suspended at
    a yield, so time spent waiting on back-pressure (or in Ray's code) is not counted and the
    signal never fires outside our code. Elsewhere (no signals) the limit is checked per clip.
    """

    def __init__(self, seconds: Optional[float], uri: str):
        self.seconds, self.uri, self.used, self.expired, self.inside = seconds, uri, 0.0, False, False
        self._t, self._old = 0.0, None
        self._signals = bool(seconds) and threading.current_thread() is threading.main_thread()

    def _fire(self, *_):
        self.expired = True
        if self.inside:
            self.inside = False
            self._raise()

    def _raise(self):
        raise DecodeTimeout(f"{self.uri}: decoding took longer than decode.timeout_sec={self.seconds:g} s")

    def resume(self) -> None:
        if not self.seconds:
            return
        if self.expired or self.used >= self.seconds:
            self._raise()
        self._t, self.inside = time.monotonic(), True
        if self._signals:
            self._old = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds - self.used)

    def pause(self) -> None:
        if not self.seconds or not self.inside:
            return
        self.inside = False
        if self._signals:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._old or signal.SIG_DFL)
        self.used += time.monotonic() - self._t
        if self.used >= self.seconds:
            self.expired = True


# -- native crashes ---------------------------------------------------------------------------
# A video that kills its decoder natively (segfault, abort) kills the worker on every retry.
# Each decode attempt is noted in Ray's cluster-wide KV store before it starts and cleared when
# it ends (ok or error row); an attempt that finds CRASHES_BEFORE_ERROR notes left by attempts
# that died becomes an error row "DecoderCrashed" instead of decoding again. One death (a
# preempted node, an OOM kill) is retried normally.
CRASHES_BEFORE_ERROR = 2


class CrashLedger:
    def __init__(self, run_id: str):
        self.run_id = run_id
        self._kv = None
        try:
            import ray

            if run_id and ray.is_initialized():
                from ray.experimental import internal_kv

                self._kv = internal_kv
        except Exception:
            self._kv = None

    def _key(self, video_id: str) -> bytes:
        return f"r2p1d/decode/{self.run_id}/{video_id}".encode()

    def begin(self, video_id: str) -> int:
        """Attempts at ``video_id`` that died so far; notes this one."""
        if self._kv is None:
            return 0
        try:
            prior = int(self._kv._internal_kv_get(self._key(video_id), namespace="r2p1d") or 0)
            self._kv._internal_kv_put(self._key(video_id), str(prior + 1), overwrite=True, namespace="r2p1d")
            return prior
        except Exception:  # the ledger is a safety net; never fail a video over it
            return 0

    def end(self, video_id: str) -> None:
        if self._kv is not None:
            try:
                self._kv._internal_kv_del(self._key(video_id), namespace="r2p1d")
            except Exception:
                pass


def decode_video(row: dict, cfg: Config, ledger: Optional[CrashLedger] = None) -> Iterator[dict]:
    """One manifest row -> its clip rows, then exactly one video row (ok or error)."""
    ledger = ledger or CrashLedger("")
    crashed = ledger.begin(row["video_id"])
    if crashed >= CRASHES_BEFORE_ERROR:
        ledger.end(row["video_id"])
        yield _video_row(row, num_clips=0, status="error", error_class="DecoderCrashed",
                         error=f"{row['uri']}: the decoder process died {crashed} times on this video "
                               "(native crash or kill); not retried")
        return
    t0 = time.perf_counter()
    uri, emitted, meta = row["uri"], 0, {}
    deadline = _Deadline(cfg.decode.timeout_sec, uri)
    try:
        try:  # the inner finally stops the clock before any handler below runs
            deadline.resume()
            action, arg, target = split_test_hook(uri)
            per_clip_sleep = _run_hook(action, arg) if action else 0.0
            fs, path = filesystem(target, cfg.storage)
            st = fs.info(path)  # a missing/forbidden object raises OSError: mapped below
            meta.update(source_size=st.get("size"), source_fingerprint=fingerprint(st))
            if not st.get("size"):
                raise DecodeError(f"{uri}: file is empty (0 bytes)", "EmptyFile")
            # Remote objects are streamed: PyAV reads through a file object doing ranged GETs of
            # storage.block_size_mb (one block held), so a few clips never fetch the whole object.
            src = nullcontext(path) if is_local(target) else fs.open(path, "rb")
            with src as f, VideoSource(f, uri, cfg.decode) as video:
                windows = plan_clips(
                    cfg.sampling, video.info.duration, video.info.fps, row.get("start_sec"), row.get("end_sec")
                )
                for clip in video.clips(windows):
                    emitted += 1
                    if per_clip_sleep:
                        time.sleep(per_clip_sleep)
                    deadline.pause()
                    yield {
                        "kind": "clip",
                        "video_id": row["video_id"],
                        "uri": uri,
                        "clip_index": clip.index,
                        "start_sec": clip.start_sec,
                        "end_sec": clip.end_sec,
                        "frame_pts": clip.frame_pts,
                        "padded_frames": clip.padded,
                        "clip_sha": clip.sha,
                        "frames": clip.frames.tobytes(),
                    }
                    deadline.resume()
                info = video.info
            meta.update(
                duration_sec=info.duration, fps=info.fps, width=info.width, height=info.height,
                rotation=info.rotation, codec=info.codec, pix_fmt=info.pix_fmt,
            )
            if emitted == 0:
                raise DecodeError(f"{uri}: no clip could be decoded", "NoFrames")
            status = dict(status="ok", error_class="", error="")
        finally:
            deadline.pause()
    except DecodeError as e:
        status = dict(status="error", error_class=e.kind, error=str(e))
    except ShortVideoError as e:
        status = dict(status="error", error_class="ShortVideo", error=f"{uri}: {e}")
    except STORAGE_ERRORS as e:  # not found, access denied, retries exhausted (S3 message kept)
        error_class, message = error_kind(e, uri)
        status = dict(status="error", error_class=error_class, error=message)
    except ValueError as e:  # e.g. start_sec past the end
        status = dict(status="error", error_class="BadWindow", error=f"{uri}: {e}")
    except Exception as e:  # a bug or an unexpected library error: still a row, with a trace
        tb = traceback.format_exc(limit=3).strip().splitlines()[-3:]
        status = dict(status="error", error_class=type(e).__name__, error=f"{uri}: {e} | {' / '.join(tb)}")
    ledger.end(row["video_id"])
    yield _video_row(row, num_clips=emitted, decode_sec=time.perf_counter() - t0, **meta, **status)


def _table(rows: list[dict], sch: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=sch)


class DecodeStage:
    """map_batches fn: manifest rows in, blocks of at most ``clips_per_block`` rows out."""

    def __init__(self, cfg: Config, run_id: str = ""):
        self.cfg, self.run_id = cfg, run_id

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        one_torch_thread()
        buf: list[dict] = []
        ledger = CrashLedger(self.run_id)
        for row in batch.to_pylist():
            for out in decode_video(row, self.cfg, ledger):
                buf.append(out)
                if len(buf) >= self.cfg.decode.clips_per_block:
                    yield _table(buf, schema.DECODED)
                    buf = []
        if buf:
            yield _table(buf, schema.DECODED)


class ClassifierActor:
    """Actor-pool stage: clips in (uint8), scores out; video rows pass through."""

    def __init__(self, cfg: Config):
        self.classifier = ClipClassifier(cfg.model, cfg.storage, embeddings=cfg.output.embeddings)
        self.labels = np.array(self.classifier.labels, dtype=object)
        crop = FrameTransform.from_preset().crop
        self.clip_shape = (cfg.sampling.clip_len, crop[0], crop[1], 3)

    def _score(self, clips: np.ndarray) -> dict[str, list]:
        s = self.classifier(clips)
        return {
            "label": self.labels[s.topk_ids[:, 0]].tolist(),
            "label_id": s.topk_ids[:, 0].tolist(),
            "score": s.topk_scores[:, 0].tolist(),
            "topk_ids": s.topk_ids.tolist(),
            "topk_labels": [self.labels[ids].tolist() for ids in s.topk_ids],
            "topk_scores": s.topk_scores.tolist(),
            "probs": list(s.probs),
            "embedding": s.embedding,  # (N, 512) or None: one Arrow column in __call__
        }

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        idx = np.flatnonzero(batch.column("kind").to_numpy(zero_copy_only=False) == "clip")
        scored = {name: [None] * n for name in SCORE_COLUMNS}
        embedding = None
        if len(idx):
            clips = clip_pixels(batch.column("frames"), self.clip_shape)
            if len(clips) != len(idx):
                raise ValueError(f"{len(idx)} clip rows but {len(clips)} clips of pixels in the batch")
            scores = self._score(clips)
            embedding = scores.pop("embedding")
            for name, values in scores.items():
                for i, v in zip(idx, values):
                    scored[name][i] = v
        scored["weights"] = [self.classifier.weights_id] * n
        scored["runtime"] = [self.classifier.runtime] * n
        out = batch.drop_columns(["frames"])
        for name, values in scored.items():
            field = schema.LABELED.field(name)
            out = out.append_column(field, pa.array(values, field.type))
        out = out.append_column(schema.LABELED.field("embedding"), embedding_array(embedding, n, idx))
        return out.select(schema.LABELED.names)


SCORE_COLUMNS = tuple(name for name, _ in schema.CLIP_SCORES) + ("probs",)


def clip_pixels(frames: pa.ChunkedArray | pa.Array, clip_shape: tuple[int, ...]) -> np.ndarray:
    """The clip rows' pixels, in row order, as one uint8 (N, T, H, W, C) array. Video rows carry
    no bytes, so the binary column's data buffer holds exactly the clips back to back: a view of
    it, not a copy per clip (a batch spanning several blocks is concatenated once)."""
    arr = frames.combine_chunks() if isinstance(frames, pa.ChunkedArray) else frames
    if len(arr) == 0:
        return np.empty((0, *clip_shape), np.uint8)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + len(arr) + 1]
    lengths = np.diff(offsets)
    size = int(np.prod(clip_shape))
    bad = np.flatnonzero((lengths != 0) & (lengths != size))
    if len(bad):
        raise ValueError(f"row {int(bad[0])}: clip of {int(lengths[bad[0]])} bytes, expected {size} {clip_shape}")
    n = int(np.count_nonzero(lengths))
    return np.frombuffer(arr.buffers()[2], np.uint8, n * size, int(offsets[0])).reshape(n, *clip_shape)
