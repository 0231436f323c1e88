"""Near duplicates: every pair of clips from different videos whose embeddings have a cosine
similarity >= a threshold. Exact (no index, no sampling).

DuckDB reads the embeddings (the ``clips`` view: committed runs, current rows, local or S3) and
returns the pairs as a relation joined with the clips' metadata; the pair search itself is a
tiled matrix product (BLAS sgemm on unit vectors, so the dot product is the cosine), because
DuckDB's per-pair ``array_inner_product`` in a self-join measured ~0.23 M pairs/s on 2 cores:
about 6 hours for 100k clips, against seconds per 100k here. Cost is O(n^2 * 512) flops and
O(n * 512 * 4) bytes plus one tile; ``r2p1d bench --only curate`` measures it, and
docs/curate.md ("Past one machine") says how to go past one machine.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..schema import EMBEDDING_DIM

log = logging.getLogger("r2p1d_batch.curate")
NO_EMBEDDINGS = ("no clip has an embedding: label with --set output.embeddings=true "
                 "(add --force to relabel videos already labeled without it)")

TILE = 2048  # rows per tile side: a 16 MiB block of similarities; worst case 4 M pairs per tile


def embedding_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-size-list (or list) column without nulls -> float32 (n, 512), one copy."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(arr) == 0:
        return np.empty((0, EMBEDDING_DIM), np.float32)
    flat = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(len(arr), -1)


def _tile_pairs(emb: np.ndarray, groups: np.ndarray, threshold: float, tile: int
                ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    n = len(emb)
    for a in range(0, n, tile):
        block = emb[a : a + tile]
        for b in range(a, n, tile):
            sims = block @ emb[b : b + tile].T
            rows = np.flatnonzero(sims.max(axis=1) >= threshold)  # hits are sparse: scan only their rows
            ri, jj = np.nonzero(sims[rows] >= threshold)
            ii = rows[ri]
            i, j = ii + a, jj + b
            keep = (i < j) & (groups[i] != groups[j])  # upper triangle, different videos
            if keep.any():
                yield i[keep], j[keep], sims[ii[keep], jj[keep]]


def pairs(emb: np.ndarray, groups: np.ndarray, threshold: float, *, max_pairs: int = 100_000,
          tile: int = TILE) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(i, j, cosine, total) for rows i < j of different ``groups`` with cosine >= threshold,
    best first; at most ``max_pairs`` kept (the best ones), ``total`` counts them all."""
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    groups = np.asarray(groups)
    keep_i, keep_j, keep_s, total = [], [], [], 0
    held = 0
    for i, j, s in _tile_pairs(emb, groups, threshold, tile):
        total += len(s)
        keep_i.append(i), keep_j.append(j), keep_s.append(s)
        held += len(s)
        if held > 2 * max_pairs:  # bounded memory: keep the best max_pairs so far
            i, j, s = (np.concatenate(x) for x in (keep_i, keep_j, keep_s))
            top = np.argpartition(-s, max_pairs)[:max_pairs]
            keep_i, keep_j, keep_s, held = [i[top]], [j[top]], [s[top]], max_pairs
    if not keep_s:
        empty = np.empty(0, np.int64)
        return empty, empty, np.empty(0, np.float32), 0
    i, j, s = (np.concatenate(x) for x in (keep_i, keep_j, keep_s))
    order = np.lexsort((j, i, -s))[:max_pairs]
    return i[order], j[order], s[order], total


def duplicates(con: duckdb.DuckDBPyConnection, threshold: float = 0.95, *, max_pairs: int = 100_000,
               tile: int = TILE) -> duckdb.DuckDBPyRelation:
    """Clip pairs of different videos with cosine >= ``threshold``, best first, as a relation."""
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"--threshold must be in [-1, 1], got {threshold}")
    clips = con.sql("SELECT run_id, video_id, clip_index, start_sec, end_sec, label, score, uri, embedding "
                    "FROM clips WHERE embedding IS NOT NULL").to_arrow_table()
    if clips.num_rows == 0:
        has_clips = con.sql("SELECT count(*) FROM clips").fetchall()[0][0]
        if has_clips:
            raise ValueError(NO_EMBEDDINGS)
    emb = embedding_matrix(clips.column("embedding"))
    groups = pc.dictionary_encode(clips.column("video_id")).combine_chunks().indices.to_numpy()
    i, j, s, total = pairs(emb, groups, threshold, max_pairs=max_pairs, tile=tile)
    if total > len(s):
        log.warning("%d pairs >= %.3f: showing the best %d (raise --threshold or max_pairs)", total, threshold, len(s))
    meta = clips.drop_columns(["embedding"])
    # Each pair as (a, b) with a before b in (video_id, run_id, clip_index) order; sorting the
    # metadata here instead of in DuckDB keeps the embeddings out of a sort buffer.
    order = pc.sort_indices(meta, [("video_id", "ascending"), ("run_id", "ascending"), ("clip_index", "ascending")])
    rank = np.empty(meta.num_rows, np.int64)
    rank[order.to_numpy()] = np.arange(meta.num_rows)
    swap = rank[i] > rank[j]
    i, j = np.where(swap, j, i), np.where(swap, i, j)
    a, b = meta.take(pa.array(i, pa.int64())), meta.take(pa.array(j, pa.int64()))
    out = pa.table({
        "cosine": pa.array(s, pa.float32()),
        "video_a": a["video_id"], "clip_a": a["clip_index"], "start_a": a["start_sec"], "label_a": a["label"],
        "video_b": b["video_id"], "clip_b": b["clip_index"], "start_b": b["start_sec"], "label_b": b["label"],
        "uri_a": a["uri"], "uri_b": b["uri"], "run_a": a["run_id"], "run_b": b["run_id"],
    })
    con.register("_duplicate_pairs", out)
    return con.sql("SELECT round(cosine, 4) AS cosine, video_a, clip_a, round(start_a, 3) AS start_a, label_a, "
                   "video_b, clip_b, round(start_b, 3) AS start_b, label_b, uri_a, uri_b, run_a, run_b "
                   "FROM _duplicate_pairs ORDER BY cosine DESC, video_a, clip_a, video_b, clip_b")
