"""The writer stage (runs/clip_writer.py) and the decode stage's hold on a video's clips, called
directly as the pipeline's Ray workers call them, and the whole chain decode -> classify -> write
-> the driver's RunWriter -> commit without Ray."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from r2p1d_batch import config, schema
from r2p1d_batch.decoding.stage import HOLD_CLIPS, DecodeStage, decode_video
from r2p1d_batch.runs.aggregate import video_topk
from r2p1d_batch.runs.clip_writer import ROW_BYTES, ClipWriter, batch_rows
from r2p1d_batch.runs.writer import RunWriter

from tests.helpers.videos import make_cut_video, make_video

CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def labeled_batch(clips: list[tuple[str, int]], videos: list[tuple], classes: int = 400,
                  embeddings: bool = False, seed: int = 0) -> tuple[pa.Table, np.ndarray]:
    """A LABELED batch as the classifier emits it: clip rows (video, clip index) in this order,
    then video rows (video, num_clips[, status]); and the clips' softmaxes."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(classes), len(clips)).astype(np.float32)
    n = len(clips) + len(videos)
    cols = {f.name: [None] * n for f in schema.LABELED}
    for r, (vid, idx) in enumerate(clips):
        top = np.argsort(-probs[r])[:5]
        cols["kind"][r], cols["video_id"][r], cols["uri"][r], cols["clip_index"][r] = "clip", vid, f"/v/{vid}", idx
        cols["start_sec"][r], cols["end_sec"][r], cols["frame_pts"][r] = float(idx), idx + 1.0, list(range(16))
        cols["padded_frames"][r], cols["clip_sha"][r] = 0, f"sha-{vid}-{idx}"
        cols["label"][r], cols["label_id"][r], cols["score"][r] = f"class{top[0]}", int(top[0]), float(probs[r, top[0]])
        cols["topk_ids"][r], cols["topk_labels"][r] = top.tolist(), [f"class{i}" for i in top]
        cols["topk_scores"][r], cols["probs"][r] = probs[r, top].tolist(), probs[r].tolist()
        cols["labeled_at"][r] = 1000.0 + r // 8  # a classifier batch per 8 clips
    for k, (vid, num, *status) in enumerate(videos):
        r = len(clips) + k
        ok = (status or ["ok"])[0] == "ok"
        cols["kind"][r], cols["video_id"][r], cols["uri"][r] = "video", vid, f"/v/{vid}"
        cols["status"][r], cols["num_clips"][r] = "ok" if ok else "error", num
        cols["error_class"][r], cols["error"][r] = ("", "") if ok else ("CorruptStream", "cut")
        cols["labeled_at"][r] = 2000.0
    cols["weights"], cols["runtime"] = ["random:seed=0"] * n, ["onnxruntime-cpu-fp32"] * n
    arrays = {f.name: pa.array(cols[f.name], f.type) for f in schema.LABELED if f.name != "embedding"}
    emb = rng.standard_normal((len(clips), schema.EMBEDDING_DIM)).astype(np.float32) if embeddings else None
    arrays["embedding"] = schema.embedding_array(emb, n, np.arange(len(clips)))
    return pa.table(arrays, schema=schema.LABELED), probs


def test_row_bytes_and_batch_rows():
    """The bytes batch_rows caps by are what LABELED rows weigh (400 classes, top-5), with
    embeddings on or off (a null fixed-size list still holds its 512 floats)."""
    for embeddings in (False, True):
        t, _ = labeled_batch([("v", i) for i in range(1000)], [], embeddings=embeddings)
        assert 0.95 * ROW_BYTES <= t.nbytes / 1000 <= ROW_BYTES
    assert batch_rows(200_000) == 128 * 2**20 // ROW_BYTES  # ~32k: capped at 128 MiB
    assert batch_rows(1000) == 1000  # under the cap: output.rows_per_file
    assert batch_rows(200_000, object_store_bytes=300 * 2**20) == 300 * 2**20 // 8 // ROW_BYTES


@pytest.mark.parametrize("embeddings", [False, True])
def test_writer_writes_the_clips_rows_and_reports_whole_videos_and_partial_sums(tmp_path, embeddings):
    # a, b: whole here (their clips interleaved as decode blocks reach a classifier batch, then
    # their rows); c: clips without its row; d: a row whose clips are elsewhere; e: failed, whole.
    order = [("b", 3), ("b", 4), ("a", 0), ("a", 1), ("b", 0), ("b", 1), ("b", 2), ("a", 2), ("c", 1), ("c", 0),
             ("e", 0)]
    batch, probs = labeled_batch(order, [("a", 3), ("b", 5), ("d", 2), ("e", 1, "error")], embeddings=embeddings)
    labels = np.array([f"class{i}" for i in range(400)], dtype=object)
    writer = ClipWriter(str(tmp_path), run_id="20260101T000000Z-stage0", model="r2plus1d_18", sampling="dense:x",
                        created_at=CREATED, labels=labels, topk_n=5)
    report = writer(batch)
    assert report.schema == schema.WRITE_REPORT
    (path,) = tmp_path.glob("part-*.parquet")
    written = pq.read_table(path)
    assert written.schema == schema.CLIPS_TABLE  # exactly the clips table's schema
    got = written.to_pylist()
    assert [(r["video_id"], r["clip_index"]) for r in got] == sorted(k for k in order if k[0] != "e")  # sorted
    by_key = {(r["video_id"], r["clip_index"]): r for r in batch.to_pylist()}
    for r in got:
        src = by_key[(r["video_id"], r["clip_index"])]
        assert r["run_id"] == "20260101T000000Z-stage0"
        assert {k: r[k] for k in r if k not in ("model", "sampling", "created_at", "run_id")} == {
            k: src[k] for k in r if k not in ("model", "sampling", "created_at", "run_id")}
        assert (r["model"], r["sampling"], r["created_at"]) == ("r2plus1d_18", "dense:x", CREATED)
        assert (r["embedding"] is not None) == embeddings

    rows = report.to_pylist()
    assert all(r["file"] == path.name for r in rows)
    (file,) = [r for r in rows if r["kind"] == "file"]
    assert file["rows"] == 10 and file["weights"] == "random:seed=0" and file["bytes"] == path.stat().st_size
    assert json.loads(file["stats"])["minValues"]["video_id"] == "a"
    assert (file["labeled_at"], file["labeled_clips"]) == ([1000.0, 1001.0], [8, 3])  # every labeled clip
    videos = {r["video_id"]: r for r in rows if r["kind"] == "video"}
    assert {v: (r["whole"], r["num_clips"], r["status"]) for v, r in videos.items()} == {
        "a": (True, 3, "ok"), "b": (True, 5, "ok"), "d": (False, 2, "ok"), "e": (True, 1, "error")}
    for vid in ("a", "b"):
        mine = [i for i, (v, _) in enumerate(order) if v == vid]
        want = video_topk(labels, 5, probs[mine].astype(np.float64).sum(0, keepdims=True) / len(mine))
        assert [videos[vid][k] for k in ("label", "topk_labels")] == [want[k][0].as_py() for k in
                                                                      ("label", "topk_labels")]
        assert videos[vid]["topk_scores"] == pytest.approx(want["topk_scores"][0].as_py())
    assert videos["e"]["label"] is None and videos["d"]["label"] is None
    (c,) = [r for r in rows if r["kind"] == "clips"]  # only c is partial here
    assert (c["video_id"], c["rows"], c["clip_indices"]) == ("c", 2, [0, 1])
    np.testing.assert_allclose(c["prob_sum"], probs[[8, 9]].astype(np.float64).sum(0), rtol=1e-12)
    # the same rows as Ray hands them over: several chunks, slices of bigger arrays
    chunked = pa.concat_tables([batch.slice(0, 3), batch.slice(3, 6), batch.slice(9)])
    assert chunked.column("probs").num_chunks == 3
    again = writer(chunked).to_pylist()
    assert [{k: v for k, v in r.items() if k != "file"} for r in again] == [
        {k: v for k, v in r.items() if k != "file"} for r in rows]
    assert pq.read_table(tmp_path / again[0]["file"]).equals(written)
    # a batch of video rows only: no file, a report all the same
    only = writer(batch.filter(pc.equal(batch.column("kind"), "video"))).to_pylist()
    assert [r["kind"] for r in only] == ["file"] + ["video"] * 4 and only[0]["rows"] == 0
    assert len(list(tmp_path.glob("*.parquet"))) == 2


def _decode(cfg, rows: list[dict], **kw) -> list[dict]:
    stage = DecodeStage(cfg, **kw)
    out = []
    for block in stage(pa.Table.from_pylist(rows)):
        assert sum(k == "clip" for k in block.column("kind").to_pylist()) <= cfg.decode.clips_per_block
        out += block.to_pylist()
    return out


def test_decode_stage_holds_the_clips_of_a_video_until_its_row(tmp_path):
    """A video that fails half-way sends no clip at all (they were held); past the hold bound a
    long video streams, and its row counts the clips it sent."""
    cfg = config.load(None, ["decode.clips_per_block=2"], manifest="m")
    good = make_video(tmp_path / "good.mp4", n_frames=45, fps=15, size=(64, 48), pattern="noise")
    cut = make_cut_video(tmp_path / "cut.mp4", n_frames=150, fps=15, keep=0.5)  # 4 clips, then corrupt
    rows = [{"video_id": v, "uri": str(p), "start_sec": None, "end_sec": None} for v, p in
            (("cut", cut), ("good", good))]
    held = _decode(cfg, rows)
    assert [(r["kind"], r["video_id"]) for r in held if r["video_id"] == "cut"] == [("video", "cut")]
    cut_row = held[[r["video_id"] for r in held].index("cut")]
    assert cut_row["status"] == "error" and cut_row["num_clips"] == 0
    good_rows = [r for r in held if r["video_id"] == "good"]
    direct = list(decode_video(rows[1], cfg))  # what decoding gives, nothing held
    assert [(r["kind"], r.get("clip_sha")) for r in good_rows] == [(r["kind"], r.get("clip_sha")) for r in direct]
    assert good_rows[-1]["num_clips"] == direct[-1]["num_clips"] >= 2
    assert HOLD_CLIPS == 64
    streamed = _decode(cfg, rows, hold_clips=1)
    sent = [r for r in streamed if r["video_id"] == "cut"]
    assert [r["kind"] for r in sent] == ["clip"] * 4 + ["video"]
    assert sent[-1]["status"] == "error" and sent[-1]["num_clips"] == 4
    assert [r["clip_sha"] for r in streamed if r["video_id"] == "good" and r["kind"] == "clip"] == [
        r["clip_sha"] for r in good_rows[:-1]]


@pytest.mark.parametrize("hold_clips, writer_rows, where", [
    (HOLD_CLIPS, None, "held in decode"),  # a short video: its clips never leave the decode task
    (1, None, "left out by the writer"),  # streamed past the bound, its row in the same writer batch
    (1, 1, "purged at commit"),  # its clips written before its row came, in other files
])
def test_a_failed_video_keeps_no_clips_through_the_whole_chain(tmp_path, hold_clips, writer_rows, where):
    """decode -> classify -> write -> RunWriter -> commit, as the pipeline's workers and driver
    run them, without Ray: a video that fails half-way keeps no clips, wherever it is caught."""
    from r2p1d_batch.classifying.stage import ClassifierActor

    cfg = config.load(None, ["model.weights=random", "model.runtime=torch", "model.device=cpu",
                             "decode.clips_per_block=2"], manifest="m")
    good = make_video(tmp_path / "good.mp4", n_frames=45, fps=15, size=(64, 48), pattern="noise")  # 2 clips
    cut = make_cut_video(tmp_path / "cut.mp4", n_frames=150, fps=15, keep=0.3)  # 2 clips, then corrupt
    todo = pa.table({"video_id": ["cut", "good"], "uri": [str(cut), str(good)],
                     "start_sec": pa.nulls(2, pa.float64()), "end_sec": pa.nulls(2, pa.float64())})
    labeled = ClassifierActor(cfg)(pa.concat_tables(list(DecodeStage(cfg, hold_clips=hold_clips)(todo))))
    out = tmp_path / "out"
    w = RunWriter(str(out), "20260101T000000Z-chain0", todo, sampling="dense", topk_n=5)
    stage = w.clip_writer()
    step = writer_rows or labeled.num_rows
    for i in range(0, labeled.num_rows, step):
        w.add(stage(labeled.slice(i, step)))
    staged = [v for f in (out / "clips").glob("part-*.parquet") for v in pq.read_table(f).column("video_id")
              .to_pylist()]
    assert ("cut" in staged) == (where == "purged at commit")
    s = w.commit(1.0)
    assert (s.videos, s.videos_ok, s.errors_by_class, s.clips) == (2, 1, {"CorruptStream": 1}, 2)
    clips = DeltaTable(str(out / "clips")).to_pyarrow_table().to_pylist()
    assert {c["video_id"] for c in clips} == {"good"} and len(clips) == 2
    videos = {v["video_id"]: v for v in DeltaTable(str(out / "videos")).to_pyarrow_table().to_pylist()}
    assert (videos["cut"]["status"], videos["cut"]["num_clips"], videos["cut"]["label"]) == ("error", 0, None)
    assert videos["good"]["num_clips"] == 2 and videos["good"]["label"]
