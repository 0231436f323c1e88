"""Ray adapters around the pure stages: per-video decode (every failure becomes a row) and
the classifier actor (a callable class: model set-up in __init__, inference in __call__)."""
from __future__ import annotations

import time
import traceback
from contextlib import nullcontext
from typing import Iterator

import numpy as np
import pyarrow as pa

from . import schema
from .classify import ClipClassifier
from .config import Config
from .decode import DecodeError, VideoSource
from .preprocess import FrameTransform
from .sampling import ShortVideoError, plan_clips
from .storage import STORAGE_ERRORS, error_kind, filesystem, fingerprint, is_local


def _video_row(row: dict, **fields) -> dict:
    return {"kind": "video", "video_id": row["video_id"], "uri": row["uri"], **fields}


def decode_video(row: dict, cfg: Config) -> Iterator[dict]:
    """One manifest row -> its clip rows, then exactly one video row (ok or error)."""
    t0 = time.perf_counter()
    uri, emitted, meta = row["uri"], 0, {}
    try:
        fs, path = filesystem(uri, cfg.storage)
        st = fs.info(path)  # a missing/forbidden object raises OSError: mapped below
        meta.update(source_size=st.get("size"), source_fingerprint=fingerprint(st))
        if not st.get("size"):
            raise DecodeError(f"{uri}: file is empty (0 bytes)", "EmptyFile")
        # Remote objects are streamed: PyAV reads through a file object doing ranged GETs of
        # storage.block_size_mb (one block held), so a few clips never fetch the whole object.
        src = nullcontext(path) if is_local(uri) else fs.open(path, "rb")
        with src as f, VideoSource(f, uri, cfg.decode) as video:
            windows = plan_clips(
                cfg.sampling, video.info.duration, video.info.fps, row.get("start_sec"), row.get("end_sec")
            )
            for clip in video.clips(windows):
                emitted += 1
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
            info = video.info
        meta.update(
            duration_sec=info.duration, fps=info.fps, width=info.width, height=info.height,
            rotation=info.rotation, codec=info.codec, pix_fmt=info.pix_fmt,
        )
        if emitted == 0:
            raise DecodeError(f"{uri}: no clip could be decoded", "NoFrames")
        status = dict(status="ok", error_class="", error="")
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
    yield _video_row(row, num_clips=emitted, decode_sec=time.perf_counter() - t0, **meta, **status)


def _table(rows: list[dict], sch: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=sch)


class DecodeStage:
    """map_batches fn: manifest rows in, blocks of at most ``clips_per_block`` rows out."""

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        buf: list[dict] = []
        for row in batch.to_pylist():
            for out in decode_video(row, self.cfg):
                buf.append(out)
                if len(buf) >= self.cfg.decode.clips_per_block:
                    yield _table(buf, schema.DECODED)
                    buf = []
        if buf:
            yield _table(buf, schema.DECODED)


class ClassifierActor:
    """Actor-pool stage: clips in (uint8), scores out; video rows pass through."""

    def __init__(self, cfg: Config):
        self.classifier = ClipClassifier(cfg.model, cfg.storage)
        self.labels = np.array(self.classifier.labels, dtype=object)
        crop = FrameTransform.from_preset().crop
        self.clip_shape = (cfg.sampling.clip_len, crop[0], crop[1], 3)

    def _score(self, frames: list[bytes]) -> dict[str, list]:
        clips = np.stack([np.frombuffer(b, dtype=np.uint8).reshape(self.clip_shape) for b in frames])
        s = self.classifier(clips)
        return {
            "label": self.labels[s.topk_ids[:, 0]].tolist(),
            "label_id": s.topk_ids[:, 0].tolist(),
            "score": s.topk_scores[:, 0].tolist(),
            "topk_ids": s.topk_ids.tolist(),
            "topk_labels": [self.labels[ids].tolist() for ids in s.topk_ids],
            "topk_scores": s.topk_scores.tolist(),
            "probs": list(s.probs),
        }

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        idx = np.flatnonzero(batch.column("kind").to_numpy(zero_copy_only=False) == "clip")
        scored = {name: [None] * n for name in SCORE_COLUMNS}
        if len(idx):
            for name, values in self._score(batch.column("frames").take(pa.array(idx)).to_pylist()).items():
                for i, v in zip(idx, values):
                    scored[name][i] = v
        scored["weights"] = [self.classifier.weights_id] * n
        scored["runtime"] = [self.classifier.runtime] * n
        out = batch.drop_columns(["frames"])
        for name, values in scored.items():
            field = schema.LABELED.field(name)
            out = out.append_column(field, pa.array(values, field.type))
        return out.select(schema.LABELED.names)


SCORE_COLUMNS = ("label", "label_id", "score", "topk_ids", "topk_labels", "topk_scores", "probs")
