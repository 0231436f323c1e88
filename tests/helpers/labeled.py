"""What the classifier stage hands the writer stage (``labeled``), a run writer over a small
manifest (``writer``), and ``add``, which takes tables through the writer stage's function into the
driver's writer: the rows the commit-protocol tests (and their crashing child processes) write."""
from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa

from r2p1d_batch import schema
from r2p1d_batch.classifying.model import categories
from r2p1d_batch.runs.writer import RunWriter


def labeled(video_id: str, n_clips: int, *, status="ok", fp="fp1", weights="random:seed=0", label_id=0,
            at: float | None = None) -> pa.Table:
    """What the classifier stage hands the writer stage for one video: n clip rows + its video
    row, labeled at ``at`` (epoch seconds; now by default)."""
    probs = [0.0] * len(categories())
    probs[label_id] = 1.0
    common = dict(video_id=video_id, uri=f"/v/{video_id}.mp4", weights=weights, runtime="torch-cpu-fp32",
                  labeled_at=time.time() if at is None else at)
    rows = [
        dict(common, kind="clip", clip_index=i, start_sec=float(i), end_sec=i + 1.0, frame_pts=[i], padded_frames=0,
             clip_sha=f"{video_id}-{i}", label=categories()[label_id], label_id=label_id, score=1.0,
             topk_ids=[label_id], topk_labels=[categories()[label_id]], topk_scores=[1.0], probs=probs)
        for i in range(n_clips)
    ]
    rows.append(dict(common, kind="video", status=status, error_class="" if status == "ok" else "Boom",
                     error="", num_clips=n_clips, source_fingerprint=fp))
    return pa.Table.from_pylist(rows, schema=schema.LABELED)


def manifest(*ids: str) -> pa.Table:
    return pa.table({"video_id": list(ids), "uri": [f"/v/{v}.mp4" for v in ids],
                     "start_sec": pa.nulls(len(ids), pa.float64()), "end_sec": pa.nulls(len(ids), pa.float64())})


def writer(out: Path, run_id: str, ids=("a", "b")) -> RunWriter:
    return RunWriter(str(out), run_id, manifest(*ids), sampling="dense", topk_n=1)


def add(w: RunWriter, *tables: pa.Table) -> None:
    """Each table through the writer stage's function (as a Ray worker runs it: a part file in
    staging, a report) and its report into the driver's writer."""
    for t in tables:
        w.add(w.clip_writer()(t))
