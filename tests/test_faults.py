"""Fault injection with real processes on a local Ray: killed decode worker, killed classifier
actor, a decoder that segfaults, a hanging input, a killed driver; and incremental reruns.

Every test checks the committed output (what readers see through the run records) against
what a clean decode gives: complete, and one row per clip / per (video, fingerprint, weights).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r2p1d_batch import config as config_mod
from r2p1d_batch.decoding.faults import TEST_HOOKS_ENV
from r2p1d_batch.runs import commit, incremental

from tests.helpers import REPO as ROOT
from tests.helpers.outputs import committed, expected_clips
from tests.helpers.videos import make_video

pytestmark = [pytest.mark.ray, pytest.mark.slow]
BASE = ["model.weights=random", "ray.num_cpus=2", "ray.object_store_memory_mb=300", "ray.progress_bars=false"]


@pytest.fixture(scope="module")
def hooks():
    old = os.environ.get(TEST_HOOKS_ENV)
    os.environ[TEST_HOOKS_ENV] = "1"
    yield
    if old is None:
        os.environ.pop(TEST_HOOKS_ENV, None)
    else:
        os.environ[TEST_HOOKS_ENV] = old


@pytest.fixture(scope="module")
def ray_session(hooks, ray_local):
    """The session's local Ray (conftest); the hooks reach decode workers through the task's
    runtime_env, which the pipeline adds when the driver has R2P1D_TEST_HOOKS=1."""
    return ray_local


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    # 2 s at 15 fps: one dense clip each (plus a padded second one for the longer ones)
    return {f"v{i}": make_video(d / f"v{i}.mp4", n_frames=30 if i % 2 else 40, fps=15, size=(64, 48), seed=i)
            for i in range(5)}


def write_manifest(path: Path, rows: dict[str, str]) -> str:
    pq.write_table(pa.table({"video_id": list(rows), "uri": list(rows.values())}), path)
    return str(path)


def cfg_for(manifest: str, out: Path, *sets: str):
    return config_mod.load(None, [*BASE, *sets], manifest=manifest, **{"output.path": str(out)})


def run(manifest: str, out: Path, *sets: str):
    from r2p1d_batch.pipeline import label as pipeline_run

    return pipeline_run(cfg_for(manifest, out, *sets))


def current_videos(out: Path) -> dict[tuple, dict]:
    return incremental.current(pa.Table.from_pylist(committed(out, "videos")))


def clip_keys(out: Path) -> list[tuple]:
    return sorted((c["video_id"], c["clip_index"], c["clip_sha"]) for c in committed(out, "clips"))


def assert_no_leftovers(out: Path) -> None:
    ids = set(commit.committed_run_ids(str(out)))
    assert not (out / commit.STAGING_DIR).exists() or not any((out / commit.STAGING_DIR).iterdir())
    for table in commit.TABLES:
        for f in (out / table).glob("part-*.parquet"):
            assert "-".join(f.name.split("-")[1:3]) in ids, f"a file of an uncommitted run left: {f}"


def descendants(name: str, root: psutil.Process | None = None) -> list[psutil.Process]:
    """Processes started under ``root`` (this test's Ray) whose title mentions ``name``."""
    found = []
    for p in (root or psutil.Process()).children(recursive=True):
        try:
            if name in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            pass
    return found


# -- a killed driver -------------------------------------------------------------------------
def test_killed_driver_then_rerun_equals_a_clean_run(tmp_path, videos, ray_session, capsys):
    """jobs/label.py killed mid-run (SIGKILL, its local Ray with it): nothing is committed; the
    rerun (the same command line, in process on the session's Ray) sweeps the leftovers and
    commits exactly what one clean run commits."""
    rows = {vid: f"testhook:slow=1.0:{videos[vid]}" for vid in ("v0", "v1", "v2")}
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "jobs" / "label.py"), manifest, "--output", str(out), "--log-level", "WARNING",
           *[a for s in BASE for a in ("--set", s)]]
    env = dict(os.environ, PYTHONPATH=str(ROOT), **{TEST_HOOKS_ENV: "1"})
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    proc = psutil.Process(driver.pid)
    tree: list[psutil.Process] = []
    try:
        deadline = time.time() + 240
        while time.time() < deadline and driver.poll() is None:
            if descendants("ClassifierActor", proc) and list(out.glob("_staging/run_id=*/_lease.json")):
                break
            time.sleep(0.5)
        assert driver.poll() is None, driver.stdout.read().decode()[-3000:]
        time.sleep(3.0)  # the actor is up and clips are flowing: now die
        assert driver.poll() is None, "the run ended before it could be killed"
        tree = proc.children(recursive=True)
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
    finally:
        if driver.poll() is None:
            tree += proc.children(recursive=True)
            driver.kill()
            driver.wait(30)
        time.sleep(2)
        for p in tree:  # the local Ray that driver started: ours to end, by pid
            try:
                p.kill()
            except psutil.Error:
                pass
    assert commit.committed_run_ids(str(out)) == []
    assert list(out.glob("_staging/run_id=*")), "the killed run should have left a lease/staging behind"

    from r2p1d_batch.cli import main

    capsys.readouterr()
    rc = main(["label", *cmd[2:]])
    stdout = capsys.readouterr().out
    assert rc == 0, stdout[-3000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["committed"] and summary["videos_new"] == 3 and summary["videos_skipped"] == 0
    assert_no_leftovers(out)

    clean = tmp_path / "clean"
    run(write_manifest(tmp_path / "clean.parquet", {v: str(videos[v]) for v in rows}), clean)

    def key(c):
        return c["video_id"], c["clip_index"], c["clip_sha"], c["label"], round(c["score"], 6), c["weights"]

    def vkey(v):
        return v["video_id"], v["status"], v["source_fingerprint"], v["weights"], v["num_clips"], v["label"]

    assert sorted(map(key, committed(out, "clips"))) == sorted(map(key, committed(clean, "clips")))
    assert sorted(map(vkey, committed(out, "videos"))) == sorted(map(vkey, committed(clean, "videos")))
    assert clip_keys(out) == expected_clips({v: videos[v] for v in rows})


# -- killed workers inside a run ---------------------------------------------------------------
class Killer(threading.Thread):
    """SIGKILLs one busy decode worker, then one classifier actor, of this process's Ray."""

    def __init__(self):
        super().__init__(daemon=True)
        self.killed: dict[str, float] = {}
        self.stop = threading.Event()

    def _kill_first(self, name: str, min_age: float) -> bool:
        for p in descendants(name):
            try:
                if time.time() - p.create_time() >= min_age:
                    p.send_signal(signal.SIGKILL)
                    self.killed[name] = time.time()
                    return True
            except psutil.Error:
                pass
        return False

    def run(self):
        for name, min_age in (("DecodeStage", 0.0), ("ClassifierActor", 3.0)):
            while not self.stop.is_set() and not self._kill_first(name, min_age):
                time.sleep(0.2)


def test_killed_decode_worker_and_actor_still_commit_everything_once(tmp_path, videos, ray_session):
    rows = {vid: f"testhook:slow=1.0:{p}" for vid, p in videos.items()}
    killer = Killer()
    killer.start()
    try:
        s = run(write_manifest(tmp_path / "m.parquet", rows), tmp_path / "out")
        done = time.time()
    finally:
        killer.stop.set()
    assert set(killer.killed) == {"DecodeStage", "ClassifierActor"}, killer.killed
    assert all(t < done for t in killer.killed.values())
    assert s.committed and s.videos == s.videos_ok == 5, s.text()
    assert clip_keys(tmp_path / "out") == expected_clips(videos)  # complete and duplicate-free
    vids = sorted(v["video_id"] for v in committed(tmp_path / "out", "videos"))
    assert vids == sorted(videos)
    assert s.clips == len(expected_clips(videos))


# -- a native crash and a hang become error rows -----------------------------------------------
def test_segfaulting_and_hanging_videos_become_error_rows(tmp_path, videos, ray_session):
    rows = {"good": str(videos["v0"]), "segv": "testhook:segv", "hang": "testhook:sleep=120"}
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    t0 = time.time()
    s = run(manifest, tmp_path / "out", "decode.timeout_sec=3")
    assert time.time() - t0 < 110  # the hang did not run its course
    assert s.committed and s.videos == 3
    got = {v["video_id"]: (v["status"], v["error_class"]) for v in committed(tmp_path / "out", "videos")}
    assert got == {"good": ("ok", ""), "segv": ("error", "DecoderCrashed"), "hang": ("error", "Timeout")}
    assert s.errors_by_class == {"DecoderCrashed": 1, "Timeout": 1}
    assert clip_keys(tmp_path / "out") == expected_clips({"good": videos["v0"]})
    # an error row is an answer for that input: the next plain run skips it
    s2 = run(manifest, tmp_path / "out", "decode.timeout_sec=3")
    assert (s2.videos_skipped, s2.videos, s2.files) == (3, 0, [])


# -- incremental reruns --------------------------------------------------------------------------
def test_grown_manifest_changed_file_new_weights_rerun_failed_and_force(tmp_path, videos, ray_session):
    out = tmp_path / "out"
    missing = str(tmp_path / "not-there.mp4")
    videos = dict(videos, v1=Path(shutil.copy(videos["v1"], tmp_path / "v1.mp4")))  # this test rewrites v1
    m1 = write_manifest(tmp_path / "m1.parquet", {"v0": str(videos["v0"]), "v1": str(videos["v1"])})
    grown = {"v0": str(videos["v0"]), "v1": str(videos["v1"]), "v2": str(videos["v2"]), "gone": missing}
    m2 = write_manifest(tmp_path / "m2.parquet", grown)

    s1 = run(m1, out)
    assert (s1.videos_new, s1.videos) == (2, 2)
    s2 = run(m2, out)  # the manifest grew: only the new rows are labeled
    assert (s2.videos_new, s2.videos_skipped, s2.videos) == (2, 2, 2)
    assert s2.errors_by_class == {"NotFound": 1}
    assert clip_keys(out) == expected_clips({v: videos[v] for v in ("v0", "v1", "v2")})

    s3 = run(m2, out, "model.seed=1")  # new weights: everything again, under the new weights id
    assert (s3.videos_changed, s3.videos_skipped, s3.videos, s3.weights) == (4, 0, 4, "random:seed=1")
    cur = current_videos(out)
    assert len(cur) == 4 and {v["weights"] for v in cur.values()} == {"random:seed=1"}  # one labeling per video
    assert len(committed(out, "videos")) == 8  # the first weights' rows stay as history

    # v1's file changes; "gone" is still missing: --rerun-failed retries its error row
    v1 = make_video(tmp_path / "v1b.mp4", n_frames=30, fps=15, size=(64, 48), seed=7)
    os.replace(v1, videos["v1"])
    s4 = run(m2, out, "model.seed=1", "run.mode=rerun_failed")
    assert (s4.videos_changed, s4.videos_retried, s4.videos_skipped, s4.videos) == (1, 1, 2, 2)
    assert s4.videos_ok == 1 and s4.errors_by_class == {"NotFound": 1}

    s5 = run(m2, out, "model.seed=1", "run.mode=force")
    assert (s5.videos_forced, s5.videos_retried, s5.videos_skipped, s5.videos) == (3, 1, 0, 4)
    cur = current_videos(out)
    now = dict(zip(grown, incremental.fingerprints(list(grown.values()))))
    assert {vid: (v["source_fingerprint"], v["run_id"]) for vid, v in cur.items()} == {
        vid: (fp, s5.run_id) for vid, fp in now.items()}
    history = committed(out, "videos")
    assert len(history) == 2 + 2 + 4 + 2 + 4  # every run's rows: v1's old fingerprint among them
    assert len({v["source_fingerprint"] for v in history if v["video_id"] == "v1"}) == 2
    # the current clips: exactly one set per current video row (clips follow their video row)
    clips = committed(out, "clips")
    for v in cur.values():
        idx = sorted(c["clip_index"] for c in clips if (c["run_id"], c["video_id"]) == (v["run_id"], v["video_id"]))
        assert idx == list(range(v["num_clips"])), v
    assert_no_leftovers(out)
