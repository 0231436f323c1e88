"""`r2p1d maintain` and `r2p1d migrate`, without Ray: compaction keeps every row, expiry keeps
the current rows and the kept history, vacuum never takes a file a reader or the current
version needs, maintenance refuses beside a running label job; an output written by the
earlier code is converted without relabeling."""
from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from r2p1d_batch import query
from r2p1d_batch.cli import main
from r2p1d_batch.config import MaintainConfig
from r2p1d_batch.runs import commit, incremental
from r2p1d_batch.runs.maintain import horizon, maintain

from tests.helpers.labeled import add, labeled, writer

LEGACY = Path(__file__).parent / "data" / "legacy-output"  # written by the code before the Delta tables
CURRENT = "SELECT video_id, clip_index, label_id, run_id FROM clips ORDER BY ALL"


def _nights(out: Path, n: int) -> list[str]:
    """A first run of 20 videos, then ``n - 1`` nights that each relabel two of them."""
    ids = [f"v{i:02d}" for i in range(20)]
    w = writer(out, "20260101T000000Z-night0", ids=ids)
    add(w, *[labeled(v, 3) for v in ids])
    runs = [w.commit(1.0).run_id]
    for night in range(1, n):
        run = f"202601{night + 1:02d}T000000Z-night{night}"
        pick = [ids[(2 * night) % 20], ids[(2 * night + 1) % 20]]
        w = writer(out, run, ids=pick)
        add(w, *[labeled(v, 2, label_id=night) for v in pick])
        runs.append(w.commit(1.0, pa.array(pick)).run_id)
    return runs


def _files(out: Path, table: str = "clips") -> int:
    return len(DeltaTable(str(out / table)).file_uris())


def test_compaction_and_expiry_keep_the_current_rows_and_the_kept_history(tmp_path):
    runs = _nights(tmp_path, 8)
    con = query.connect(str(tmp_path))
    current = con.sql(CURRENT).fetchall()
    history = con.sql("SELECT count(*) FROM clips_all").fetchall()
    assert len(current) == 6 * 3 + 14 * 2 and history == [(60 + 7 * 4,)]
    before = _files(tmp_path)
    assert before > 4  # each night rewrote a file and added one
    m = maintain(str(tmp_path), cfg=MaintainConfig(min_retention_hours=0), rows_per_file=1000)
    assert m.compacted["clips"]["files_removed"] == before and _files(tmp_path) == 1 == m.files["clips"]
    assert m.expired_runs == [] and m.horizon is None
    con = query.connect(str(tmp_path))
    assert con.sql(CURRENT).fetchall() == current and con.sql("SELECT count(*) FROM clips_all").fetchall() == history
    # expire all but the newest 3 runs: the current rows stay, history keeps those 3 runs
    m = maintain(str(tmp_path), cfg=MaintainConfig(keep_runs=3, min_retention_hours=0), rows_per_file=1000)
    assert m.expired_runs == runs[:-3] and m.vacuumed["clips"] > 0
    con = query.connect(str(tmp_path))
    assert con.sql(CURRENT).fetchall() == current
    assert con.sql("SELECT run_id, expired FROM runs WHERE expired ORDER BY 1").fetchall() == [
        (r, True) for r in runs[:-3]]
    kept = con.sql("SELECT count(*) FROM clips_all WHERE run_id IN (SELECT run_id FROM runs WHERE NOT expired)")
    assert kept.fetchall() == [(3 * 4,)]
    old_current = con.sql("SELECT count(*) FROM clips WHERE run_id IN (SELECT run_id FROM runs WHERE expired)")
    assert con.sql("SELECT count(*) FROM clips_all WHERE run_id IN (SELECT run_id FROM runs WHERE expired)"
                   ).fetchall() == old_current.fetchall()
    # on disk: what the current version, the kept runs' own files and the versions since the
    # oldest kept run reference (time travel inside the horizon), nothing else
    on_disk = {p.name for p in (tmp_path / "clips").glob("*.parquet")}
    kept = [r for r in commit.committed_runs(str(tmp_path)) if not r["expired"]]
    needed = {Path(u).name for u in DeltaTable(str(tmp_path / "clips")).file_uris()}
    needed |= {Path(f).name for r in kept for f in r["files"] if f.startswith("clips/")}
    latest = DeltaTable(str(tmp_path / "clips")).version()
    reachable = {Path(u).name for v in range(min(r["clips_version"] for r in kept), latest + 1)
                 for u in DeltaTable(str(tmp_path / "clips"), version=v).file_uris()}
    assert needed <= on_disk == reachable | needed
    # a label run after maintenance sees the same current rows
    assert len(incremental.committed_videos(str(tmp_path))) == 20
    assert len(list((tmp_path / commit.COMMITS_DIR).glob("*.json"))) == 3


def test_a_reader_that_opened_before_maintenance_still_reads(tmp_path):
    _nights(tmp_path, 4)
    con = query.connect(str(tmp_path))
    want = con.sql(CURRENT).fetchall()
    maintain(str(tmp_path), cfg=MaintainConfig(keep_runs=1), rows_per_file=1000)  # default: files kept 1 h
    assert con.sql(CURRENT).fetchall() == want  # its version's files are still there


def test_maintenance_refuses_beside_a_running_label_job(tmp_path, capsys):
    _nights(tmp_path, 2)
    w = writer(tmp_path, "20260301T000000Z-living", ids=("v00",))  # a label run in progress (this process)
    add(w, labeled("v00", 1))
    version = DeltaTable(str(tmp_path / "clips")).version()
    assert main(["maintain", str(tmp_path)]) == 2
    assert "run 20260301T000000Z-living is running" in capsys.readouterr().err
    assert DeltaTable(str(tmp_path / "clips")).version() == version
    w.abort()
    assert main(["maintain", str(tmp_path), "--keep-runs", "1"]) == 0
    assert "1 runs newly expired" in capsys.readouterr().out


def test_horizon_keeps_whichever_limit_keeps_more():
    import datetime as dt

    at = [dt.datetime(2026, 1, d, tzinfo=dt.timezone.utc) for d in (1, 2, 3, 4)]
    runs = pa.table({"committed_at": at})
    now = dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc).timestamp()
    assert horizon(runs, None, None, now) is None
    assert horizon(runs, None, 2, now) == at[2].timestamp()
    assert horizon(runs, 1.5, None, now) == now - 1.5 * 86400
    assert horizon(runs, 1.5, 3, now) == at[1].timestamp()  # 3 runs keep more than 1.5 days
    assert horizon(runs, 0.001, None, now) == at[3].timestamp()  # never past the newest run


def test_an_output_of_the_earlier_code_is_migrated_without_relabeling(tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(LEGACY, out)
    legacy = query.connect(str(out))  # read as before
    runs = [r for (r,) in legacy.sql("SELECT run_id FROM runs ORDER BY 1").fetchall()]
    assert len(runs) == 2
    # the earlier rule kept both labelings of the video whose file changed; the new one keeps the newest
    newest = legacy.sql("SELECT video_id, clip_index, clip_sha, label, run_id FROM clips_all "
                        "QUALIFY run_id = max(run_id) OVER (PARTITION BY video_id) ORDER BY ALL").fetchall()
    history = legacy.sql("SELECT count(*) FROM clips_all").fetchall()
    extras = legacy.sql("SELECT video_id, split FROM videos_all ORDER BY ALL").fetchall()
    # label refuses it, naming the command that converts it
    with pytest.raises(commit.LegacyOutputError, match=r"r2p1d migrate"):
        commit.check_writable(str(out))
    assert main(["migrate", str(out)]) == 0
    assert "migrated 2 committed runs" in capsys.readouterr().out
    con = query.connect(str(out))
    assert con.sql("SELECT video_id, clip_index, clip_sha, label, run_id FROM clips ORDER BY ALL").fetchall() == newest
    assert con.sql("SELECT count(*) FROM clips_all").fetchall() == history
    assert con.sql("SELECT video_id, split FROM videos_all ORDER BY ALL").fetchall() == extras
    assert con.sql("SELECT count(*) FROM videos").fetchall() == [(4,)]
    assert con.sql("SELECT count(*) FROM clips WHERE embedding IS NOT NULL").fetchall() == [(len(newest),)]
    assert [r for (r,) in con.sql("SELECT run_id FROM runs ORDER BY 1").fetchall()] == runs
    assert not (out / "_runs").exists() and not list(out.glob("clips/run_id=*"))
    # and it is a Delta output like any other: a new run commits on top
    w = writer(out, "20260301T000000Z-after0", ids=("x",))
    add(w, labeled("x", 2))
    w.commit(1.0)
    assert query.connect(str(out)).sql("SELECT count(*) FROM videos").fetchall() == [(5,)]
    assert main(["migrate", str(out)]) == 2  # nothing left to migrate
