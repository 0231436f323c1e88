"""Curate section (``r2p1d bench --only curate``): what ``output.embeddings`` costs the classifier
(clips/s with and without the embedding output, ONNX Runtime on CPU, interleaved runs, best of
several) and the clips table (Parquet bytes per clip, zstd as the writer writes), and the duplicate
report on synthetic embeddings (wall time, peak RSS, recall of planted duplicates), each size in a
fresh process.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import schema
from .output import status_mb

DIM = schema.EMBEDDING_DIM


# -- the model: clips/s with and without the embedding output -----------------------------------
def embedding_cost(batch: int = 8, threads: int = 2, rounds: int = 3, batches_per_round: int = 2) -> dict:
    import torch

    from .. import config as config_mod
    from ..classifying.classifier import ClipClassifier

    cfg = config_mod.load(None, ["model.weights=random", "model.runtime=onnxruntime", "model.device=cpu",
                                 f"model.num_cpus={threads}"])
    x = np.random.default_rng(0).integers(0, 256, (batch, 16, 112, 112, 3), dtype=np.uint8)
    clfs = {"logits": ClipClassifier(cfg.model), "logits+embedding": ClipClassifier(cfg.model, embeddings=True)}
    for c in clfs.values():
        c(x)  # warm-up: ORT arena, first-call allocations
    best = {k: 0.0 for k in clfs}
    for _ in range(rounds):  # interleaved, so drift on shared cores hits both sides alike
        for name, c in clfs.items():
            t = time.perf_counter()
            for _ in range(batches_per_round):
                c(x)
            best[name] = max(best[name], batch * batches_per_round / (time.perf_counter() - t))
    with torch.inference_mode():
        eager = ClipClassifier(cfg.model.model_copy(update={"runtime": "torch"}), embeddings=True)
        _, e_ref = eager.forward(x)
    lo, e_ort = clfs["logits+embedding"].forward(x)
    l_plain = clfs["logits"].logits(x)
    return {
        "batch": batch, "threads": threads,
        "clips_per_s": {k: round(v, 3) for k, v in best.items()},
        "throughput_ratio": round(best["logits+embedding"] / best["logits"], 4),
        "ort_vs_eager_embedding": {"min_cosine": float((e_ort * e_ref).sum(1).min()),
                                   "max_abs_diff": float(np.abs(e_ort - e_ref).max())},
        "logits_max_abs_diff_vs_logits_only_graph": float(np.abs(lo - l_plain).max()),
        "norms": [float(np.linalg.norm(e_ort, axis=1).min()), float(np.linalg.norm(e_ort, axis=1).max())],
    }


# -- storage: Parquet bytes per clip --------------------------------------------------------------
def unit_vectors(n: int, seed: int = 0, clusters: int = 400, spread: float = 0.6) -> np.ndarray:
    """Clustered unit vectors (400 'actions', each a cloud around a centre): closer to real clip
    features than isotropic noise, where nothing would be near anything."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIM)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def bytes_per_clip(n: int = 20_000) -> dict:
    from ..schema import embedding_array

    emb = unit_vectors(n, seed=1)
    sizes = {}
    for name, rows in (("without", None), ("with", emb)):
        t = pa.table({"video_id": pa.array([f"v{i // 10:06d}" for i in range(n)]),
                      "embedding": embedding_array(rows, n, np.arange(n))})
        sink = pa.BufferOutputStream()
        pq.write_table(t, sink, compression="zstd")  # as writer._PartWriter
        sizes[name] = sink.getvalue().size
    return {"clips": n, "raw_bytes_per_clip": DIM * 4,
            "parquet_zstd_bytes_per_clip": round((sizes["with"] - sizes["without"]) / n, 1)}


# -- the duplicate report at scale ----------------------------------------------------------------
def write_synthetic_output(root: Path, n: int, clips_per_video: int = 10, planted: int = 1000, seed: int = 0
                           ) -> list[tuple[str, int, str, int]]:
    """A committed one-run output of ``n`` clips with embeddings, and ``planted`` near-duplicate
    pairs (a clip copied into another video with small noise: cosine ~0.99)."""
    from ..schema import embedding_array

    rng = np.random.default_rng(seed)
    emb = unit_vectors(n, seed)
    vids = np.array([f"v{i // clips_per_video:07d}" for i in range(n)])
    idx = np.arange(n) % clips_per_video
    src = rng.choice(n, planted, replace=False)
    dst = (src + clips_per_video * rng.integers(1, n // clips_per_video, planted)) % n
    keep = ~np.isin(dst, src)  # a copy never overwrites another pair's source
    src, dst = src[keep], dst[keep]
    _, first = np.unique(dst, return_index=True)  # nor another pair's copy
    src, dst = src[first], dst[first]
    noisy = emb[src] + 0.006 * rng.standard_normal((len(src), DIM)).astype(np.float32)
    emb[dst] = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    cols = {f.name: pa.nulls(n, f.type) for f in schema.CLIPS}
    cols.update(video_id=pa.array(vids), clip_index=pa.array(idx, pa.int32()), uri=pa.array(np.char.add(vids, ".mp4")),
                start_sec=pa.array(idx.astype(float)), label=pa.array(["x"] * n), weights=pa.array(["w"] * n),
                embedding=embedding_array(emb, n, np.arange(n)))
    uv = np.unique(vids)
    vcols = {f.name: pa.nulls(len(uv), f.type) for f in schema.VIDEOS}
    vcols.update(video_id=pa.array(uv), status=pa.array(["ok"] * len(uv)), weights=pa.array(["w"] * len(uv)),
                 source_fingerprint=pa.array(["f"] * len(uv)))
    for table, t in (("clips", pa.table(cols, schema=schema.CLIPS)), ("videos", pa.table(vcols, schema=schema.VIDEOS))):
        (root / table / "run_id=r1").mkdir(parents=True)
        pq.write_table(t, root / table / "run_id=r1" / "part-00000.parquet", compression="zstd")
    (root / "_runs").mkdir()
    (root / "_runs" / "run_id=r1.json").write_text(json.dumps({"run_id": "r1", "committed": True, "files": [
        "clips/run_id=r1/part-00000.parquet", "videos/run_id=r1/part-00000.parquet"]}))
    a, b = np.minimum(src, dst), np.maximum(src, dst)  # rows sort by video id = by index here
    return [(vids[i], int(idx[i]), vids[j], int(idx[j])) for i, j in zip(a, b)]


def _child(root: str, threshold: float, planted_file: str) -> dict:
    """Run in a fresh process (duplicates_at): DuckDB views + the duplicate report, its costs."""
    from .. import query

    rss0 = status_mb("VmRSS")
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = ru0.ru_utime + ru0.ru_stime
    t0 = time.perf_counter()
    con = query.connect(root)
    rows = query.report(con, "duplicates", threshold=threshold, max_pairs=10_000_000).fetchall()
    wall = time.perf_counter() - t0
    found = {(r[1], r[2], r[5], r[6]) for r in rows}
    planted = {tuple(p) for p in json.loads(Path(planted_file).read_text())}
    ru = resource.getrusage(resource.RUSAGE_SELF)  # CPU time: less at the mercy of other jobs than wall time
    return {"seconds": round(wall, 2), "cpu_seconds": round(ru.ru_utime + ru.ru_stime - cpu0, 2),
            "pairs": len(rows),
            "planted_found": len(planted & found), "planted": len(planted),
            "peak_rss_mb": status_mb("VmHWM"), "rss_after_imports_mb": rss0}


def duplicates_at(n: int, threshold: float = 0.95) -> dict:
    with tempfile.TemporaryDirectory() as d:
        planted = write_synthetic_output(Path(d) / "out", n)
        pf = Path(d) / "planted.json"
        pf.write_text(json.dumps(planted))
        code = ("import json; from r2p1d_batch.bench.curate import _child; "  # one JSON line to this process
                f"print(json.dumps(_child({str(Path(d) / 'out')!r}, {threshold}, {str(pf)!r})))")
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        res = json.loads(p.stdout.strip().splitlines()[-1])
    return {"clips": n, "threshold": threshold, **res, "embeddings_mb": round(n * DIM * 4 / 2**20, 1)}


def curate_rows(sizes: tuple[int, ...], storage_clips: int, model: tuple[int, int, int],
                threshold: float = 0.95) -> tuple[list[dict], list[str], dict]:
    """The duplicate report at each of ``sizes`` (the rows); the clips table's bytes per clip (over
    ``storage_clips``) and the classifier's cost (``model``: batch, rounds, batches per round) as
    notes and in full as the section's ``storage`` and ``model`` keys."""
    storage = bytes_per_clip(storage_clips)
    notes = [f"rows: the duplicate report (threshold {threshold:g}) over synthetic clustered embeddings with "
             "planted near-duplicate pairs, each size in a fresh process; peak_rss_mb is that process's",
             f"clips table: {storage['parquet_zstd_bytes_per_clip']} bytes per clip for the embedding (Parquet, "
             f"zstd, {storage['clips']} clips; raw {storage['raw_bytes_per_clip']})"]
    batch, rounds, batches_per_round = model
    cost = embedding_cost(batch=batch, rounds=rounds, batches_per_round=batches_per_round)
    cps, emb = cost["clips_per_s"], cost["ort_vs_eager_embedding"]
    notes.append(f"classifier, ONNX Runtime on CPU (batch {batch}, {cost['threads']} threads, interleaved, best "
                 f"of {rounds}): logits only {cps['logits']} / + embedding {cps['logits+embedding']} clips/s = "
                 f"{cost['throughput_ratio']}x; logits max |d| vs the logits-only graph "
                 f"{cost['logits_max_abs_diff_vs_logits_only_graph']:.1e}; embedding vs PyTorch eager: min "
                 f"cosine {emb['min_cosine']:.8f}, max |d| {emb['max_abs_diff']:.1e}")
    return [duplicates_at(n, threshold) for n in sizes], notes, {"storage": storage, "model": cost}
