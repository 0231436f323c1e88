"""Commit protocol, leftovers, the "current" rule and incremental selection, without Ray.

Crashes are real processes that die (os._exit / SIGKILL) at a chosen point of the protocol.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from r2p1d_batch import config as config_mod
from r2p1d_batch import query, schema
from r2p1d_batch.classifying.model import load_model, weights_id
from r2p1d_batch.decoding.faults import REFIRE_SEC, TEST_HOOKS_ENV, CrashLedger, Deadline, DecodeTimeout
from r2p1d_batch.decoding.stage import decode_video
from r2p1d_batch.runs import commit, incremental
from r2p1d_batch.runs.aggregate import WriteConflict
from r2p1d_batch.runs.writer import RunWriter
from r2p1d_batch.storage import filesystem

from tests.helpers import REPO as ROOT
from tests.helpers.labeled import add, labeled, manifest, writer
from tests.helpers.videos import make_video


def delta_rows(out: Path, table: str = "clips") -> int:
    """What the table's own reader sees (delta-rs, no project code): 0 when there is no table."""
    try:
        return DeltaTable(str(out / table)).to_pyarrow_table().num_rows
    except TableNotFoundError:
        return 0


def committed_rows(out: Path, table: str = "clips") -> int:
    try:
        return query.connect(str(out)).sql(f"SELECT count(*) FROM {table}").fetchall()[0][0]
    except query.NoCommittedRuns:
        return 0


def test_commit_makes_the_run_visible_at_once(tmp_path):
    w = writer(tmp_path, "20260101T000000Z-aaaaaa")
    add(w, labeled("a", 3), labeled("b", 2))
    w._flush()  # files exist in the tables' directories (clips: the writer stage; videos: flushed)...
    assert list(tmp_path.glob("clips/part-20260101T000000Z-aaaaaa-*.parquet"))
    assert list(tmp_path.glob("videos/part-20260101T000000Z-aaaaaa-*.parquet"))
    assert commit.committed_run_ids(str(tmp_path)) == []
    assert delta_rows(tmp_path) == 0 and committed_rows(tmp_path) == 0  # ...and nobody sees them
    s = w.commit(1.0)
    assert s.committed and s.videos == 2 and s.clips == 5
    assert commit.committed_run_ids(str(tmp_path)) == [s.run_id]
    assert delta_rows(tmp_path) == 5 and committed_rows(tmp_path) == 5 and delta_rows(tmp_path, "videos") == 2
    record = json.loads((tmp_path / commit.COMMITS_DIR / f"{1:020d}.json").read_text())
    assert record["run_id"] == s.run_id and sorted(record["files"]) == sorted(s.files) == sorted(
        str(p.relative_to(tmp_path)) for p in tmp_path.glob("*/part-*.parquet") if p.parent.name != "runs")
    assert not (tmp_path / "_staging").exists()
    listed = [str(tmp_path / f) for f in record["files"] if f.startswith("clips/")]
    assert commit.committed_files(str(tmp_path), "clips") == listed
    assert sorted(commit.current_files(str(tmp_path), "clips")) == sorted(listed)
    assert DeltaTable(str(tmp_path / "runs")).to_pyarrow_table().column("run_id").to_pylist() == [s.run_id]


def test_only_reported_files_are_published_and_a_report_delivered_twice_counts_once(tmp_path):
    w = writer(tmp_path, "20260101T000000Z-bbbbbb")
    stage = w.clip_writer()
    first = labeled("a", 4)
    stage(first)  # an attempt that wrote its file and died before its report reached the driver...
    report = stage(first)  # ...and its retry, which writes a file of its own
    w.add(report)
    w.add(report)  # the same report again: dropped whole
    add(w, labeled("b", 1))
    assert len(list(tmp_path.glob("clips/part-*.parquet"))) == 3
    s = w.commit(1.0)
    t = DeltaTable(str(tmp_path / "clips")).to_pyarrow_table().to_pylist()
    assert sorted((r["video_id"], r["clip_index"]) for r in t) == [("a", 0), ("a", 1), ("a", 2), ("a", 3), ("b", 0)]
    assert s.videos == 2 and s.clips == 5 and w.duplicates_dropped == 1
    assert len([f for f in s.files if f.startswith("clips/")]) == 2  # the retry's and b's, not the dead attempt's
    assert not (tmp_path / "_staging").exists()
    assert len(list(tmp_path.glob("clips/part-*.parquet"))) == 2  # the unreported file was deleted


def test_reports_cut_over_blocks_or_sharing_one_are_taken_whole(tmp_path):
    """Ray Data may put two reports in one block, or cut a large one over two blocks."""
    w = writer(tmp_path, "20260101T000000Z-bbbbba", ids=("a", "b", "c"))
    stage = w.clip_writer()
    first, second = stage(labeled("a", 3)), stage(pa.concat_tables([labeled("b", 2), labeled("c", 1)]))
    w.add(pa.concat_tables([first, second.slice(0, 2)]))  # a whole report and the head of another
    assert w.summary.videos == 1  # b and c wait for the rest of their report
    w.add(second.slice(2))
    s = w.commit(1.0)
    assert (s.videos, s.clips) == (3, 6)
    assert len(pq.read_table(tmp_path / "clips")) == 6
    w = writer(tmp_path / "cut", "20260101T000000Z-bbbbbb", ids=("a",))
    w.add(w.clip_writer()(labeled("a", 3)).slice(0, 1))
    with pytest.raises(RuntimeError, match=r"reports of \['part-[\w-]+\.parquet'\] arrived in part"):
        w.commit(1.0)
    w.abort()


def test_clips_of_a_video_reported_by_two_files_refuse_the_commit(tmp_path):
    """A non-deterministic replay could hand the same clips to two writer tasks: refused, named."""
    w = writer(tmp_path, "20260101T000000Z-bbbbbc")
    a = labeled("a", 4)
    add(w, a.filter(pc.equal(a.column("kind"), "clip")).slice(0, 2))  # clips 0-1 in one file...
    with pytest.raises(WriteConflict, match=r"video a: whole in one part file and also reported by part-[\w-]+"):
        add(w, a)  # ...and 0-3 again in another, with the video row (whole there)
    w.abort()
    assert commit.committed_run_ids(str(tmp_path)) == [] and not (tmp_path / "_staging").exists()
    w = writer(tmp_path, "20260101T000000Z-bbbbbe", ids=("a",))
    add(w, a.slice(0, 2))
    with pytest.raises(WriteConflict, match=r"video a: 5 clips reported by part-[\w-]+\.parquet, part-[\w-]+\.parquet, "
                                            r"its row says 4"):
        add(w, a.slice(1))  # clip 1 in two files, the row in the second: not whole there
    w.abort()
    # Resends after a finished (its state is gone: nothing is kept per finished video):
    for resend, refusal in ((a.slice(0, 1), r"rows still pending for videos \['a'\]"),  # a clip: pending
                            (a, r"2 videos finished, 1 handed to Ray \(a video delivered twice\)")):  # all of it
        w = writer(tmp_path, "20260101T000000Z-bbbbbd", ids=("a",))
        add(w, a, resend)
        with pytest.raises(RuntimeError, match=refusal):
            w.commit(1.0)
        w.abort()
    assert commit.committed_run_ids(str(tmp_path)) == []


def test_first_clip_and_steady_rate_count_labeled_clips(tmp_path):
    """first_clip_sec runs from the run's start to the first classifier batch; steady_clips_per_sec
    counts the clips after that batch over first to last batch (the classifier's labeled_at): a
    report delivered twice adds neither clips nor time."""
    started = time.time() - 5.0  # the run began 5 s before its first clip was labeled
    t0 = started + 5.0
    w = RunWriter(str(tmp_path), "20260101T000000Z-dddddd", manifest("a", "b"), sampling="dense", topk_n=1,
                  started=started)
    report = w.clip_writer()(pa.concat_tables([labeled("a", 2, at=t0), labeled("b", 3, at=t0 + 0.2)]))
    w.add(report)  # one file, clips of two classifier batches
    late = report.set_column(report.schema.get_field_index("labeled_at"), "labeled_at",  # kind=file comes first
                             pa.array([[t0 + 1.2]] + [None] * (report.num_rows - 1), pa.list_(pa.float64())))
    w.add(late)  # the same report again (same file), claiming a later time: dropped
    s = w.commit(time.time() - started)
    assert 5.0 <= s.first_clip_sec < s.wall_sec
    assert s.steady_clips_per_sec == pytest.approx(3 / 0.2, rel=1e-3)  # not over the 1.2 s to the late report
    assert "first clip at 5." in s.text()
    one = writer(tmp_path / "one", "20260101T000000Z-eeeeee", ids=("a",))
    add(one, labeled("a", 2))
    s1 = one.commit(1.0)
    assert s1.first_clip_sec is not None and s1.steady_clips_per_sec is None  # one batch: no rate
    assert json.loads(s1.to_json())["steady_clips_per_sec"] is None


def test_manifest_extras_pass_through_to_videos_in_manifest_order(tmp_path):
    todo = manifest("a", "b", "c").append_column("zone", pa.array(["z1", "z2", "z3"])).append_column(
        "camera", pa.array([7, 8, 9]))
    w = RunWriter(str(tmp_path), "20260101T000000Z-ffffff", todo, sampling="dense", topk_n=1)
    add(w, pa.concat_tables([labeled("c", 1), labeled("a", 2)]), labeled("b", 1, status="error"))
    w.commit(1.0)
    t = pq.read_table(next((tmp_path / "videos").glob("part-*.parquet")))
    assert t.schema.names[-3:] == ["zone", "camera", "run_id"] and t.schema.names[:-3] == schema.VIDEOS.names
    assert DeltaTable(str(tmp_path / "videos")).schema().to_arrow().names == t.schema.names
    assert sorted(zip(*[t.column(c).to_pylist() for c in ("video_id", "zone", "camera")])) == [
        ("a", "z1", 7), ("b", "z2", 8), ("c", "z3", 9)]
    big = manifest(*[f"v{i}" for i in range(300_000)]).append_column("zone", pa.nulls(300_000, pa.string()))
    w = RunWriter(str(tmp_path / "big"), "20260101T000000Z-ffffff", big, sampling="dense", topk_n=1)
    assert w.flush_rows == 300_000 // 64  # each join scans the rows to label: ~64 per run
    w.abort()


def test_an_error_video_keeps_no_clips_and_counts_its_class(tmp_path):
    """Clips of a video that failed after they were written (past the decode stage's hold bound)
    are dropped from the written file at commit: only that file is rewritten."""
    w = writer(tmp_path, "20260101T000000Z-cccccc")
    add(w, pa.concat_tables([labeled("a", 2, status="error"), labeled("b", 1)]))
    s = w.commit(1.0)
    assert s.videos_error == 1 and s.errors_by_class == {"Boom": 1} and s.clips == 1
    assert [(r["video_id"], r["clip_index"]) for r in pq.read_table(tmp_path / "clips").to_pylist()] == [("b", 0)]
    v = {r["video_id"]: r for r in pq.read_table(tmp_path / "videos").to_pylist()}
    assert (v["a"]["status"], v["a"]["num_clips"], v["a"]["label"]) == ("error", 0, None)
    w = writer(tmp_path / "only", "20260101T000000Z-cccccd", ids=("a",))
    add(w, labeled("a", 2, status="error"))  # a file of nothing but a failed video's clips: not published
    assert [f for f in w.commit(1.0).files if f.startswith("clips/")] == []


def _run_child(code: str, out) -> subprocess.CompletedProcess:
    prelude = textwrap.dedent(f"""
        import os, sys
        sys.path[:0] = [{str(ROOT)!r}]
        from tests.helpers.labeled import add, labeled, writer
        from r2p1d_batch import query
        from r2p1d_batch.runs import commit, incremental
        from pathlib import Path
        import pyarrow as pa
        out = {str(out)!r}
    """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("where", ["while_writing", "before_record"])
def test_a_killed_run_leaves_nothing_visible_and_is_swept(tmp_path, where):
    # A committed run first, so the output is not empty.
    w = writer(tmp_path, "20260101T000000Z-000000")
    add(w, labeled("a", 1), labeled("b", 1))
    first = w.commit(1.0).run_id
    kill = {
        # killed mid-run: files in the tables' directories and a lease, no record
        "while_writing": "w = writer(out, '20260102T000000Z-111111'); add(w, labeled('a', 3)); w._flush(); os._exit(9)",
        # killed with every file written, just before the record's put (the commit point)
        "before_record": (
            "commit.put_new = lambda *a, **k: os._exit(9)\n"
            "w = writer(out, '20260102T000000Z-111111'); add(w, labeled('a', 3), labeled('b', 2)); "
            "w.commit(1.0)"),
    }[where]
    proc = _run_child(kill, tmp_path)
    assert proc.returncode == 9, proc.stderr
    assert commit.committed_run_ids(str(tmp_path)) == [first]
    assert list(tmp_path.glob("clips/part-20260102T000000Z-111111-*"))  # its files are there...
    assert committed_rows(tmp_path) == 2 and committed_rows(tmp_path, "videos") == 2  # ...and invisible
    assert delta_rows(tmp_path) == 2 and delta_rows(tmp_path, "videos") == 2  # to every Delta reader too
    swept = commit.sweep(str(tmp_path))  # the killed driver's pid is gone: stale at once
    assert swept.removed == ["20260102T000000Z-111111"] and swept.live == [] and swept.recovered == []
    assert not list(tmp_path.glob("*/part-20260102T000000Z-111111-*"))
    assert not (tmp_path / "_staging" / "run_id=20260102T000000Z-111111").exists()


@pytest.mark.parametrize("where", ["after_record", "between_tables"])
def test_a_run_killed_after_its_record_is_rolled_forward_whole(tmp_path, where):
    """The record is the commit point: a driver killed after its put (before any table commit,
    or with `clips` applied and `videos` not) leaves a committed run that readers do not see
    half of, and that the next run (or maintenance) applies whole, once."""
    w = writer(tmp_path, "20260101T000000Z-000000")
    add(w, labeled("a", 1), labeled("b", 1))
    first = w.commit(1.0).run_id
    kill = {
        "after_record": "commit._apply_record = lambda *a, **k: os._exit(9)\n",
        "between_tables": ("from r2p1d_batch.runs import tables\n"
                           "real = tables.apply\n"
                           "tables.apply = lambda out, t, *a, **k: (os._exit(9) if t == 'videos'\n"
                           "                                        else real(out, t, *a, **k))\n"),
    }[where]
    proc = _run_child(kill + "w = writer(out, '20260102T000000Z-222222', ids=('a', 'c')); "
                      "add(w, labeled('a', 3, fp='fp2'), labeled('c', 2)); w.commit(1.0, pa.array(['a']))",
                      tmp_path)
    assert proc.returncode == 9, proc.stderr
    # Not applied yet (or half): our readers stay on the last applied run
    assert commit.committed_run_ids(str(tmp_path)) == [first]
    assert committed_rows(tmp_path) == 2 and committed_rows(tmp_path, "videos") == 2
    swept = commit.sweep(str(tmp_path))
    assert swept.recovered == ["20260102T000000Z-222222"] and swept.removed == []
    assert commit.committed_run_ids(str(tmp_path)) == [first, "20260102T000000Z-222222"]
    con = query.connect(str(tmp_path))
    assert con.sql("SELECT video_id, count(*), min(run_id) FROM clips GROUP BY ALL ORDER BY ALL").fetchall() == [
        ("a", 3, "20260102T000000Z-222222"), ("b", 1, first), ("c", 2, "20260102T000000Z-222222")]
    assert con.sql("SELECT count(*) FROM videos").fetchall() == [(3,)]
    assert delta_rows(tmp_path) == 6 and delta_rows(tmp_path, "videos") == 3
    assert commit.sweep(str(tmp_path)).recovered == []  # once
    assert not list(tmp_path.glob("_staging/*"))


def test_a_second_writer_on_the_same_sequence_number_commits_nothing(tmp_path):
    """Two drivers that both planned against run N (the lease is the first guard): the record's
    conditional create lets one commit N + 1; the other fails, named, and leaves no file."""
    a = writer(tmp_path, "20260101T000000Z-aaaaaa")
    b = writer(tmp_path, "20260101T000000Z-bbbbbb")
    add(a, labeled("a", 1), labeled("b", 1))
    add(b, labeled("a", 2), labeled("b", 2))
    a.commit(1.0)
    seq = commit._applied
    commit._applied = lambda *args: 0  # b still believes nothing is committed
    try:
        with pytest.raises(commit.RunInProgressError, match=r"run 20260101T000000Z-aaaaaa committed as number 1 "
                                                            r"while run 20260101T000000Z-bbbbbb was running"):
            b.commit(1.0)
    finally:
        commit._applied = seq
    b.abort()
    assert commit.committed_run_ids(str(tmp_path)) == ["20260101T000000Z-aaaaaa"]
    assert not list(tmp_path.glob("*/part-20260101T000000Z-bbbbbb-*"))
    assert committed_rows(tmp_path) == 2


def test_a_live_lease_is_kept_and_reported(tmp_path):
    w = writer(tmp_path, "20260103T000000Z-222222")  # this process holds the lease
    add(w, labeled("a", 1))
    swept = commit.sweep(str(tmp_path))
    assert swept.live == ["20260103T000000Z-222222"] and swept.removed == []
    assert (tmp_path / "_staging" / "run_id=20260103T000000Z-222222" / commit.LEASE).exists()
    # a lease from another host counts by heartbeat age
    lease = json.loads((tmp_path / "_staging" / "run_id=20260103T000000Z-222222" / commit.LEASE).read_text())
    lease["host"] = "elsewhere"
    assert commit.lease_alive(lease, 900) and not commit.lease_alive(lease, 900, now=lease["heartbeat"] + 901)
    w.abort()
    assert not (tmp_path / "_staging").exists()


def _commit(out: Path, run_id: str, *tables: pa.Table) -> None:
    """A run of ``tables``; the videos it labels that are already current are relabeled (the
    plan's changed/retried/forced rows)."""
    ids = dict.fromkeys(v for t in tables for v in t.column("video_id").to_pylist())
    known = set(incremental.committed_videos(str(out)).column("video_id").to_pylist())
    w = RunWriter(str(out), run_id, manifest(*ids), sampling="dense", topk_n=1)
    add(w, *tables)
    w.commit(1.0, pa.array([v for v in ids if v in known], pa.string()))


def test_select_new_changed_retried_forced_skipped(tmp_path):
    _commit(tmp_path, "20260101T000000Z-000001", labeled("a", 1, fp="fa"), labeled("b", 1, status="error", fp="fb"))
    committed = incremental.committed_videos(str(tmp_path))
    ids, fps = ["a", "b", "c", "a"], ["fa", "fb", "fc", "fa2"]
    w0 = "random:seed=0"
    assert incremental.select(ids, fps, w0, committed, "incremental") == ["skipped", "skipped", "new", "changed"]
    assert incremental.select(ids, fps, w0, committed, "rerun_failed") == ["skipped", "retried", "new", "changed"]
    assert incremental.select(ids, fps, w0, committed, "force") == ["forced", "retried", "new", "changed"]
    assert incremental.select(ids, fps, "random:seed=1", committed, "incremental") == [
        "changed", "changed", "new", "changed"]
    # a later run that fixed b: its newest row (ok) decides
    _commit(tmp_path, "20260102T000000Z-000002", labeled("b", 2, fp="fb"))
    committed = incremental.committed_videos(str(tmp_path))
    assert incremental.select(["b"], ["fb"], w0, committed, "rerun_failed") == ["skipped"]


def test_current_rule_gives_one_labeling_per_video(tmp_path):
    """A relabel (forced, new weights, changed source) replaces the video's earlier rows in the
    tables, in the same commit that adds the new ones; history keeps every labeling."""
    _commit(tmp_path, "20260101T000000Z-000001", labeled("a", 2, label_id=1), labeled("b", 1))
    _commit(tmp_path, "20260102T000000Z-000002", labeled("a", 3, label_id=2))  # a forced relabel of a
    _commit(tmp_path, "20260103T000000Z-000003", labeled("a", 1, weights="random:seed=1"))  # new weights
    con = query.connect(str(tmp_path))
    v = con.sql("SELECT video_id, weights, run_id, num_clips FROM videos ORDER BY ALL").fetchall()
    assert v == [("a", "random:seed=1", "20260103T000000Z-000003", 1),
                 ("b", "random:seed=0", "20260101T000000Z-000001", 1)]
    c = con.sql("SELECT video_id, weights, clip_index, label_id FROM clips ORDER BY ALL").fetchall()
    assert c == [("a", "random:seed=1", 0, 0), ("b", "random:seed=0", 0, 0)]
    assert delta_rows(tmp_path) == 2 and delta_rows(tmp_path, "videos") == 2  # any Delta reader: the same rows
    assert con.sql("SELECT count(*) FROM runs").fetchall() == [(3,)]
    # history stays: every run's own rows
    assert con.sql("SELECT count(*) FROM clips_all").fetchall() == [(2 + 1 + 3 + 1,)]
    assert con.sql("SELECT run_id, count(*) FROM videos_all GROUP BY ALL ORDER BY ALL").fetchall() == [
        ("20260101T000000Z-000001", 2), ("20260102T000000Z-000002", 1), ("20260103T000000Z-000003", 1)]
    old = DeltaTable(str(tmp_path / "clips"), version=1).to_pyarrow_table()  # time travel: the first run's
    assert sorted(old.column("video_id").to_pylist()) == ["a", "a", "b"]
    current = incremental.current(incremental.committed_videos(str(tmp_path)))
    assert current["a"]["run_id"] == "20260103T000000Z-000003" and len(current) == 2


def test_driver_fingerprints_match_the_decode_stage(tmp_path):
    path = make_video(tmp_path / "v.mp4", n_frames=20, fps=15, size=(64, 48))
    cfg = config_mod.load(None, [], manifest="m")
    row = {"video_id": "v", "uri": str(path), "start_sec": None, "end_sec": None}
    decoded = [r for r in decode_video(row, cfg) if r["kind"] == "video"][0]
    fp = incremental.fingerprints([str(path), str(tmp_path / "missing.mp4")])
    assert fp == [decoded["source_fingerprint"], None]
    time.sleep(0.01)
    make_video(path, n_frames=25, fps=15, size=(64, 48))  # the file changes: so does its fingerprint
    assert incremental.fingerprints([str(path)])[0] != fp[0]


def test_weights_id_without_building_the_model(tmp_path):
    import torch

    assert weights_id("random", seed=3) == load_model("random", seed=3).weights_id
    ckpt = tmp_path / "w.pth"
    torch.save(load_model("random", seed=1).module.state_dict(), ckpt)
    assert weights_id(str(ckpt)) == load_model(str(ckpt)).weights_id
    assert weights_id(str(ckpt)).startswith("file:w.pth@sha256:")


def test_decode_time_limit_turns_a_hang_into_a_timeout_row(tmp_path, monkeypatch):
    monkeypatch.setenv(TEST_HOOKS_ENV, "1")
    cfg = config_mod.load(None, ["decode.timeout_sec=0.5"], manifest="m")
    t0 = time.perf_counter()
    rows = list(decode_video({"video_id": "h", "uri": "testhook:sleep=30", "start_sec": None, "end_sec": None}, cfg))
    assert time.perf_counter() - t0 < 5
    assert [(r["kind"], r["status"], r["error_class"]) for r in rows] == [("video", "error", "Timeout")]
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # the timer is disarmed afterwards
    # time spent suspended at a yield (back-pressure) does not count against the limit
    path = make_video(tmp_path / "v.mp4", n_frames=45, fps=15, size=(64, 48))
    row = {"video_id": "v", "uri": str(path), "start_sec": None, "end_sec": None}
    warm = list(decode_video(row, config_mod.load(None, ["decode.timeout_sec=null"], manifest="m")))
    assert warm[-1]["decode_sec"] < 2.0 and len(warm) >= 3  # decoding proper is well under the limit
    out = []
    for r in decode_video(row, config_mod.load(None, ["decode.timeout_sec=2"], manifest="m")):
        out.append(r)
        time.sleep(1.0)  # the consumer is slow: > 2 s suspended in total
    assert out[-1]["status"] == "ok" and len(out) == len(warm)


def test_a_timeout_swallowed_on_its_way_out_comes_again():
    """Library code between the decode and us may swallow the timeout (a blanket ``except
    Exception`` in a retry loop, as the crash ledger's safety net did): the limit still ends the
    decode, REFIRE_SEC later, and the timer is disarmed afterwards."""
    deadline = Deadline(0.3, "u")
    t0 = time.monotonic()
    with pytest.raises(DecodeTimeout, match="decode.timeout_sec=0.3"):
        deadline.resume()
        try:
            try:
                time.sleep(10)
            except Exception:
                pass  # swallowed
            time.sleep(10)  # still hung
        finally:
            deadline.pause()
    assert time.monotonic() - t0 < 0.3 + REFIRE_SEC + 1.5
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


class SlowLedger(CrashLedger):
    """A crash ledger whose KV store answers slowly, as a fresh worker's first call may."""

    def begin(self, video_id: str) -> int:
        time.sleep(1.5)
        return 0


def test_the_crash_ledger_is_off_the_decode_clock(tmp_path):
    """Its calls go to Ray's KV store: set-up, not decode time. A 1.5 s answer under a 1 s limit
    does not turn a good video into a Timeout row."""
    path = make_video(tmp_path / "v.mp4", n_frames=30, fps=15, size=(64, 48))
    row = {"video_id": "v", "uri": str(path), "start_sec": None, "end_sec": None}
    list(decode_video(row, config_mod.load(None, ["decode.timeout_sec=null"], manifest="m")))  # imports: warm
    rows = list(decode_video(row, config_mod.load(None, ["decode.timeout_sec=1"], manifest="m"), SlowLedger("r")))
    assert rows[-1]["status"] == "ok", rows[-1]


def test_cli_flags_map_to_run_mode():
    from r2p1d_batch.cli import build_parser
    from r2p1d_batch.cli.label import build_config

    parser = build_parser()
    for argv, mode in (([], "incremental"), (["--rerun-failed"], "rerun_failed"), (["--force"], "force")):
        assert build_config(parser.parse_args(["label", "m.parquet", *argv])).run.mode == mode
    with pytest.raises(SystemExit):
        parser.parse_args(["label", "m.parquet", "--force", "--rerun-failed"])


def test_driver_memory_does_not_grow_with_the_number_of_videos(tmp_path):
    import psutil

    ids = [f"v{i}" for i in range(5000)]
    w = RunWriter(str(tmp_path), "20260101T000000Z-memory", manifest(*ids), sampling="dense", topk_n=5)
    stage = w.clip_writer()
    proc, rss = psutil.Process(), {}
    for b in range(0, len(ids), 50):  # a report per 50 videos; each report's last video completes in the next
        t = pa.concat_tables([labeled(vid, 4, label_id=(b + i) % 400) for i, vid in enumerate(ids[b:b + 50])])
        w.add(stage(t.slice(0, t.num_rows - 2)))
        w.add(stage(t.slice(t.num_rows - 2)))
        if b in (1000, len(ids) - 50):
            rss[b] = proc.memory_info().rss
    s = w.commit(1.0)
    assert (s.videos, s.clips) == (5000, 20_000)
    assert not w.aggregator.pending
    assert rss[len(ids) - 50] - rss[1000] < 24 * 2**20  # measured: flat


# -- the same protocol on S3 (moto's server on loopback) ---------------------------------------
@pytest.fixture(scope="module")
def s3_out():
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "eu-west-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    fs, _ = filesystem("s3://runs-test")
    fs.mkdir("runs-test")
    yield "s3://runs-test/out"
    server.stop()
    for k, v in old.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def test_s3_commit_is_visible_only_through_the_record_and_a_killed_run_is_swept(s3_out):
    from deltalake import DeltaTable as Delta

    from r2p1d_batch.runs import tables

    fs, root = filesystem(s3_out)
    opts = tables.delta_options(s3_out)
    assert opts["conditional_put"] == "etag" and opts["AWS_ALLOW_HTTP"] == "true"
    w = RunWriter(s3_out, "20260101T000000Z-s3s3s3", manifest("a", "b"), sampling="dense", topk_n=1)
    add(w, labeled("b", 2, label_id=1))  # one file, reported...
    w.clip_writer()(labeled("a", 3))  # ...one not (a dead attempt): never added
    add(w, labeled("a", 3))
    w._flush()
    assert len(fs.find(f"{root}/clips")) == 3 and not fs.exists(f"{root}/clips/_delta_log")
    assert commit.committed_run_ids(s3_out) == []
    s = w.commit(1.0)
    assert commit.committed_run_ids(s3_out) == [s.run_id]
    files = commit.committed_files(s3_out, "clips")
    assert len(files) == 2 and sum(pq.read_table(f, filesystem=fs).num_rows for f in files) == 5
    fs.invalidate_cache()
    assert len([f for f in fs.find(f"{root}/clips") if "_delta_log" not in f]) == 2  # the dead attempt's is gone
    assert not fs.exists(f"{root}/_staging/run_id={s.run_id}")

    def count():
        return Delta(f"{s3_out}/clips", storage_options=opts).to_pyarrow_table().num_rows

    assert count() == 5 and query.connect(s3_out).sql("SELECT count(*) FROM clips").fetchall() == [(5,)]
    # a run killed just before its record: never visible, swept next time
    proc = _run_child("commit.put_new = lambda *a, **k: os._exit(9)\n"
                      "w = writer(out, '20260102T000000Z-dead00', ids=('a',)); add(w, labeled('a', 3)); "
                      "w.commit(1.0)", s3_out)
    assert proc.returncode == 9, proc.stderr
    fs.invalidate_cache()
    assert fs.find(f"{root}/clips", prefix="part-20260102T000000Z-dead00")  # written, but no record:
    assert commit.committed_run_ids(s3_out) == [s.run_id]  # not committed
    assert count() == 5
    assert commit.sweep(s3_out).removed == ["20260102T000000Z-dead00"]
    fs.invalidate_cache()
    assert not fs.find(f"{root}/clips", prefix="part-20260102T000000Z-dead00")
    assert not fs.find(f"{root}/_staging")
    # two writers taking the same sequence number: S3's conditional create refuses the second
    assert commit.put_new(fs, commit.record_path(root, 1), "{}") is False
    assert commit.put_new(fs, f"{root}/_commits/probe.json", "{}") is True
