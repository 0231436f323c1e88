"""Per-video overhead plumbing (issue 12): decode input blocks, the crash ledger's KV calls, a
failing row that never imports torch, and the overhead bench section on a real local Ray.
Speed itself is shown by `r2p1d bench --only overhead`, not here."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from r2p1d_batch import config
from r2p1d_batch.decoding.faults import CRASHES_BEFORE_ERROR, CrashLedger
from r2p1d_batch.decoding.stage import decode_video
from r2p1d_batch.planning.sizing import BLOCKS_PER_SLOT, MAX_BLOCKS, ROWS_PER_BLOCK_MAX, decode_blocks

from tests.helpers import REPO
from tests.helpers.videos import make_video


@pytest.mark.parametrize("rows, slots, blocks", [
    (0, 4, 1), (1, 4, 1), (5, 1, 5),  # never more blocks than rows
    (100, 15, 100),  # few rows per slot: one video per block, as before
    (1000, 15, 120),  # 8 blocks per slot (~8 videos each)
    (5000, 1, 79),  # at most 64 rows per block: 79 tasks, not 4096
    (10**6, 15, MAX_BLOCKS),  # capped (244 rows per block)
])
def test_decode_blocks(rows, slots, blocks):
    assert decode_blocks(rows, slots) == blocks
    if rows:
        per_block = rows / blocks
        assert per_block <= ROWS_PER_BLOCK_MAX or blocks == MAX_BLOCKS
        assert blocks >= min(rows, BLOCKS_PER_SLOT * slots)


def test_missing_file_rows_never_import_torch(tmp_path):
    """A block of rows that fail their stat: one error row each, all in one output block (only
    clips fill blocks; video rows ride along), and the worker never imports torch (or FFmpeg)."""
    code = f"""
import json, sys
import pyarrow as pa
from r2p1d_batch import config
from r2p1d_batch.decoding.stage import DecodeStage
cfg = config.load(None, [])
rows = pa.table({{"video_id": [f"m{{i}}" for i in range(20)], "uri": [f"{tmp_path}/absent{{i}}.mp4" for i in range(20)],
                 "start_sec": [None] * 20, "end_sec": [None] * 20}})
blocks = list(DecodeStage(cfg, "")(rows))
out = [r for b in blocks for r in b.to_pylist()]
print(json.dumps({{"torch": "torch" in sys.modules, "sizes": [b.num_rows for b in blocks],
                  "rows": [(r["video_id"], r["kind"], r["status"], r["error_class"]) for r in out]}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["torch"] is False
    assert got["sizes"] == [20]
    assert got["rows"] == [[f"m{i}", "video", "error", "NotFound"] for i in range(20)]


@pytest.mark.ray
def test_crash_ledger_notes_only_attempts_that_reach_the_decoder(ray_local, tmp_path):
    from ray.experimental import internal_kv

    cfg = config.load(None, [])
    ledger = CrashLedger("ledger-test")

    me = ray_local.get_runtime_context().get_node_id()

    def note(vid):  # attempts noted (one node id each)
        v = internal_kv._internal_kv_get(ledger._key(vid), namespace="r2p1d")
        return None if v is None else len(v.decode().split())

    def died(vid, n):  # n earlier attempts on this (alive) node that never cleared their note
        internal_kv._internal_kv_put(ledger._key(vid), " ".join([me] * n), namespace="r2p1d")

    # put-if-absent, then count: attempts that died are counted, the first costs one call
    assert ledger.begin("x") == 0 and note("x") == 1
    assert ledger.begin("x") == 1 and note("x") == 2
    ledger.end("x")
    assert note("x") is None

    # a row that fails its stat never touches its note (no decoder ran, nothing can crash)
    died("gone", 5)
    rows = list(decode_video({"video_id": "gone", "uri": str(tmp_path / "absent.mp4")}, cfg, ledger))
    assert [(r["kind"], r["error_class"]) for r in rows] == [("video", "NotFound")]
    assert note("gone") == 5

    video = str(make_video(tmp_path / "v.mp4", n_frames=20, fps=15))
    # a decoded video: noted while it decodes, cleared at its row
    rows = list(decode_video({"video_id": "ok", "uri": video}, cfg, ledger))
    assert rows[-1]["status"] == "ok" and len(rows) > 1 and note("ok") is None
    # one earlier death: decoded again
    died("once", 1)
    rows = list(decode_video({"video_id": "once", "uri": video}, cfg, ledger))
    assert rows[-1]["status"] == "ok" and note("once") is None
    # CRASHES_BEFORE_ERROR deaths: an error row, no decode, the note cleared
    died("bad", CRASHES_BEFORE_ERROR)
    rows = list(decode_video({"video_id": "bad", "uri": video}, cfg, ledger))
    assert [(r["kind"], r["status"], r["error_class"], r["num_clips"]) for r in rows] == [
        ("video", "error", "DecoderCrashed", 0)]
    assert note("bad") is None


@pytest.mark.ray
@pytest.mark.slow
def test_overhead_section_runs_both_pipelines(ray_local):
    """The bench section on the session's Ray: every missing-file row is one error row of the job
    (multi-row decode blocks), the bare pipeline returns every row, and Ray keeps running."""
    from r2p1d_batch.bench.overhead import overhead_rows

    rows, notes = overhead_rows(40, 1, ["model.weights=random"])
    fused, two_ops, ours = rows
    assert fused["rows"] == two_ops["rows"] == ours["rows"] == 40 and all(r["seconds"] > 0 for r in rows)
    assert ours["vs_fused"] == pytest.approx(fused["seconds"] / ours["seconds"])
    assert ours["vs_two_operators"] == pytest.approx(two_ops["seconds"] / ours["seconds"])
    assert "'NotFound': 40" in notes[0]
    assert ray_local.is_initialized()


@pytest.mark.parametrize("sets", [["model.runtime=torch", "model.device=cpu"], []])
def test_classifier_actor_passes_video_rows_while_its_model_loads(sets):
    """The actor is ready before its model: video-only batches carry the driver's weights id and
    the planned runtime; the first batch with clips waits for the model, whose ids match."""
    import numpy as np
    import pyarrow as pa

    from r2p1d_batch import schema
    from r2p1d_batch.classifying.stage import ClassifierActor, planned_runtime

    cfg = config.load(None, ["model.weights=random", *sets])
    actor = ClassifierActor(cfg, weights_id="random:seed=0")
    cols = {f.name: [None] * 3 for f in schema.DECODED}
    cols.update(kind=["video", "video", "clip"], video_id=["a", "b", "b"], uri=["x"] * 3, clip_index=[None, None, 0],
                frames=[None, None, np.zeros((16, 112, 112, 3), np.uint8).tobytes()])
    table = pa.table({f.name: pa.array(cols[f.name], f.type) for f in schema.DECODED}, schema=schema.DECODED)
    videos = actor(table.slice(0, 2))
    assert videos.column("weights").to_pylist() == ["random:seed=0"] * 2
    assert videos.column("runtime").to_pylist() == [planned_runtime(cfg.model)] * 2
    assert videos.column("label").to_pylist() == [None, None]
    out = actor(table)
    assert out.column("label").to_pylist()[2] is not None
    assert actor.classifier.weights_id == "random:seed=0"
    assert actor.classifier.runtime == planned_runtime(cfg.model)
    assert out.column("runtime").to_pylist() == [actor.classifier.runtime] * 3
