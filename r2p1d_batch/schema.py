"""Column names and Arrow schemas of every table the job reads or writes.

``run_id`` (the run that labeled the row) is the last column of the output's Delta tables
(``CLIPS_TABLE``; `videos`: VIDEOS, the manifest's pass-through columns, run_id). Outputs of
the earlier layout kept it out of the files, as the Hive partition ``run_id=…/``.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

# Manifest: `uri` is required; the rest is optional. Other columns pass through to `videos`.
MANIFEST_REQUIRED = ("uri",)
MANIFEST_OPTIONAL = {
    "video_id": pa.string(),
    "start_sec": pa.float64(),
    "end_sec": pa.float64(),
}

TOPK = pa.list_(pa.string())

# Where a clip is: shared by the decode stage's rows and the `clips` output.
CLIP_WHERE = [
    ("video_id", pa.string()),
    ("uri", pa.string()),
    ("clip_index", pa.int32()),
    ("start_sec", pa.float64()),
    ("end_sec", pa.float64()),
    ("frame_pts", pa.list_(pa.int64())),  # pts of the source frames, in the stream time base
    ("padded_frames", pa.int16()),  # frames repeated because the video ended (short_video=pad)
    ("clip_sha", pa.string()),  # sha256 of the uint8 clip (T,H,W,C), as the model saw it
]

# What decoding learned about a source: shared by the decode stage's rows and `videos`.
VIDEO_SOURCE = [
    ("status", pa.string()),  # ok | error
    ("error_class", pa.string()),
    ("error", pa.string()),  # empty when ok
    ("num_clips", pa.int32()),
    ("duration_sec", pa.float64()),
    ("fps", pa.float64()),
    ("width", pa.int32()),  # after rotation
    ("height", pa.int32()),
    ("rotation", pa.int16()),
    ("codec", pa.string()),
    ("pix_fmt", pa.string()),
    ("source_size", pa.int64()),
    ("source_fingerprint", pa.string()),
    ("decoder", pa.string()),  # cpu | nvdec | nvdec+cpu (NVDEC failed mid-video, the CPU did the rest)
    ("decoder_note", pa.string()),  # why not (only) NVDEC where the run had it; "" otherwise
]

PROVENANCE = [
    ("model", pa.string()),
    ("weights", pa.string()),
    ("runtime", pa.string()),
    ("sampling", pa.string()),
]

# A clip's scores: top-1 and top-k, best first.
CLIP_SCORES = [
    ("label", pa.string()),
    ("label_id", pa.int16()),
    ("score", pa.float32()),
    ("topk_ids", pa.list_(pa.int16())),
    ("topk_labels", TOPK),
    ("topk_scores", pa.list_(pa.float32())),
]

# The clip's pooled 512-d feature, L2-normalised (embeddings.py); null unless output.embeddings.
EMBEDDING_DIM = 512
EMBEDDING = ("embedding", pa.list_(pa.float32(), EMBEDDING_DIM))

CLIPS = pa.schema(
    CLIP_WHERE
    + CLIP_SCORES
    + PROVENANCE
    + [("created_at", pa.timestamp("us", tz="UTC"))]
    + [EMBEDDING]
)

VIDEOS = pa.schema(
    [("video_id", pa.string()), ("uri", pa.string())]
    + VIDEO_SOURCE
    + [
        ("label", pa.string()),  # video level: top-1 of the mean clip softmax
        ("score", pa.float32()),
        ("topk_labels", TOPK),
        ("topk_scores", pa.list_(pa.float32())),
    ]
    + PROVENANCE
    + [("decode_sec", pa.float64()), ("created_at", pa.timestamp("us", tz="UTC"))]
)

RUN_ID = pa.field("run_id", pa.string())
# The `clips` Delta table's files. Delta has no fixed-size list: the embedding is stored as the
# list<float> the table's schema says (so every engine's reader takes the files as they are);
# the query views give it back as FLOAT[512].
CLIPS_TABLE = pa.schema([pa.field("embedding", pa.list_(pa.float32())) if f.name == "embedding" else f
                         for f in CLIPS]).append(RUN_ID)


def videos_table(videos: pa.Schema) -> pa.Schema:
    """The `videos` Delta table's files: VIDEOS and the pass-through columns, then run_id."""
    return videos.append(RUN_ID)


# Names a manifest's pass-through columns may not take.
RESERVED = frozenset(VIDEOS.names) | frozenset(CLIPS.names) | {"run_id"}

# What the decode stage emits: one row per clip (kind="clip") plus one per video (kind="video").
DECODED = pa.schema(
    [("kind", pa.string())]
    + CLIP_WHERE
    + [("frames", pa.binary())]  # uint8 (T,112,112,3), C-contiguous
    + VIDEO_SOURCE
    + [("decode_sec", pa.float64())]
)

# What the classifier stage emits: DECODED without pixels, plus scores. `probs` (the full
# softmax) goes as far as the writer stage, which sums it per video for the video-level mean; it
# is not written. `labeled_at` (epoch seconds, the classifier's clock) is when the batch was
# labeled: the run's arrival clock (RunSummary.first_clip_sec); not written either.
LABELED = pa.schema(
    [f for f in DECODED if f.name != "frames"]
    + CLIP_SCORES
    + [
        ("probs", pa.list_(pa.float32())),
        ("weights", pa.string()),
        ("runtime", pa.string()),
        EMBEDDING,
        ("labeled_at", pa.float64()),
    ]
)

# What the writer stage (runs/clip_writer.py) returns to the driver for each batch it wrote:
# every row names the batch's report (`file`: its part file, part-<run_id>-<uuid>.parquet, in
# the clips table's directory, not in the table until the run commits), and `kind` says what
# the row is:
# - "file" (first): the file itself: `rows` written (0: the batch had no clip, no file), its
#   `bytes` and Delta statistics (`stats`, JSON: runs/tables.py), the
#   report's own row count (`report_rows`: Ray Data may cut a large output into two blocks), the
#   model's `weights`/`runtime` of its first clip, and the (labeled_at, labeled_clips) pairs of
#   the classifier batches its clips came from;
# - "video": a video row of the batch, passed through without clip scores. `whole`: all its
#   clips were in this batch (num_clips of them, once each); it is then finished: an ok one
#   carries its video-level `label`, `score`, `topk_labels`, `topk_scores`, a failed one's clips
#   were left out of the file;
# - "clips": the clips in the file of one video that is not whole here: `rows` clips, their
#   `clip_indices` (ascending) and `prob_sum`, the float64 sum of their softmax.
WRITE_REPORT = pa.schema(
    [("kind", pa.string()), ("file", pa.string()), ("rows", pa.int64()), ("report_rows", pa.int64()),
     ("bytes", pa.int64()), ("stats", pa.string()), ("video_id", pa.string()), ("uri", pa.string())]
    + VIDEO_SOURCE
    + [
        ("decode_sec", pa.float64()),
        ("weights", pa.string()),
        ("runtime", pa.string()),
        ("whole", pa.bool_()),
        ("label", pa.string()),
        ("score", pa.float32()),
        ("topk_labels", TOPK),
        ("topk_scores", pa.list_(pa.float32())),
        ("clip_indices", pa.list_(pa.int32())),
        ("prob_sum", pa.list_(pa.float64())),
        ("labeled_at", pa.list_(pa.float64())),
        ("labeled_clips", pa.list_(pa.int64())),
    ]
)


def embedding_array(rows: np.ndarray | None, n: int, idx: np.ndarray) -> pa.FixedSizeListArray:
    """An Arrow column of ``n`` rows: row ``idx[i]`` holds ``rows[i]``, the others null (video
    rows, or embeddings off when ``rows`` is None). Built from one flat buffer, no per-row lists."""
    flat = np.zeros((n, EMBEDDING_DIM), np.float32)
    valid = np.zeros(n, bool)
    if rows is not None and len(idx):
        flat[idx] = rows
        valid[idx] = True
    values = pa.array(flat.ravel())
    mask = pa.array(~valid)
    return pa.FixedSizeListArray.from_arrays(values, EMBEDDING_DIM, mask=mask)
