"""Device consistency audit: metrics and sampling on known arrays; the onnxruntime, replay
and qai-hub backends end to end on a small output made by the real labeling job.

The qai-hub test runs the real qai_hub client against tests/helpers/hub_emulator.py on 127.0.0.1.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r2p1d_batch.audit import metrics
from r2p1d_batch.audit.sample import stratified_sample

from tests.helpers import REPO
from tests.helpers.outputs import label_run
from tests.helpers.videos import make_video

DEVICE = "Samsung Galaxy S24 (Family)"


# -- metrics (known arrays) ---------------------------------------------------------------
def test_metrics_on_known_arrays():
    ref = np.array([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    same = metrics.compare(ref, ref.copy())
    assert same["top1_agree"].tolist() == [True, True]
    assert same["top5_overlap"].tolist() == [1.0, 1.0]
    assert np.allclose(same["cosine"], 1.0)
    assert np.isinf(same["psnr_db"]).all() and same["max_abs_diff"].tolist() == [0.0, 0.0]

    out = ref.copy()
    out[0, [6, 0]] = out[0, [0, 6]]  # top-1 (class 6) swapped with the smallest: 4 of 5 top ids stay
    out[1] = [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # orthogonal
    m = metrics.compare(ref, out)
    assert m["top1_agree"].tolist() == [False, False]
    assert m["top5_overlap"][0] == pytest.approx(4 / 5)
    assert m["cosine"][1] == pytest.approx(0.0)
    assert m["max_abs_diff"].tolist() == [6.0, 1.0]

    # PSNR = 20 log10(max|ref| / RMSE): peak 4, error 0.04 everywhere -> 40 dB.
    r = np.array([[4.0, -2.0, 1.0, 0.0]])
    assert metrics.psnr_db(r, r + 0.04)[0] == pytest.approx(40.0)
    assert metrics.psnr_db(r, r - 0.4)[0] == pytest.approx(20.0)
    assert metrics.cosine(np.zeros((1, 3)), np.zeros((1, 3)))[0] == 1.0
    assert metrics.cosine(np.zeros((1, 3)), np.ones((1, 3)))[0] == 0.0
    with pytest.raises(ValueError):
        metrics.compare(ref, ref[:, :3])

    s = metrics.summarize(m)
    assert s["clips"] == 2 and s["top1_agreement"] == 0.0 and s["cosine_min"] == pytest.approx(0.0)
    hist = dict(metrics.log_histogram(np.array([0.0, 0.0, 5e-9, 3e-7, 2e-7, 0.5, 300.0])))
    assert hist["0"] == 2 and hist["< 1e-8"] == 1 and hist["1e-7 .. 1e-6"] == 2
    assert hist["1e-1 .. 1e0"] == 1 and hist[">= 1e2"] == 1


# -- stratified sampling --------------------------------------------------------------------
def test_stratified_sample_covers_labels_in_proportion():
    labels = ["a"] * 60 + ["b"] * 30 + ["c"] * 9 + ["d"]
    idx = stratified_sample(labels, 10, seed=0)
    picked = [labels[i] for i in idx]
    assert len(idx) == 10 and len(set(idx.tolist())) == 10 and list(idx) == sorted(idx)
    # one each, the 6 others shared by size (59:29:8:0 -> 4, 2, 0... by largest remainder)
    assert {k: picked.count(k) for k in "abcd"} == {"a": 5, "b": 3, "c": 1, "d": 1}
    assert stratified_sample(labels, 10, seed=0).tolist() == idx.tolist()  # seeded
    assert stratified_sample(labels, 10, seed=1).tolist() != idx.tolist()
    assert stratified_sample(labels, 500, seed=0).tolist() == list(range(100))  # all of them


def test_stratified_sample_fewer_than_labels():
    labels = [f"l{i % 7}" for i in range(70)]
    idx = stratified_sample(labels, 3, seed=4)
    assert len(idx) == 3 and len({labels[i] for i in idx}) == 3  # three labels, one clip each
    assert stratified_sample(labels, 7, seed=4).size == 7
    assert len({labels[i] for i in stratified_sample(labels, 7, seed=4)}) == 7


def test_exact_resize_does_not_depend_on_thread_count():
    """clip_sha must match between a 1-thread Ray decode task and a multi-thread audit."""
    import torch

    from r2p1d_batch.decoding.preprocess import resize_exact

    img = np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    before = torch.get_num_threads()
    outs = []
    for n in (1, 2, 4):
        torch.set_num_threads(n)
        outs.append(resize_exact(img, (128, 171)))
    torch.set_num_threads(before)
    assert all(np.array_equal(outs[0], o) for o in outs[1:])
    assert torch.get_num_threads() == before


# -- end to end on a real labeled output ------------------------------------------------------
class _AuditCLI:
    """`r2p1d audit ARGS` in process."""

    @staticmethod
    def main(args: list[str]) -> int:
        from r2p1d_batch.cli import main

        return main(["audit", *args])


def _audit_cli():
    return _AuditCLI()


@pytest.fixture(scope="module")
def labeled(ray_local, tmp_path_factory):
    """2 tiny videos x 2 clips each, labeled on the session's local Ray (random weights)."""
    root = tmp_path_factory.mktemp("labeled")
    videos = root / "videos"
    videos.mkdir()
    a = make_video(videos / "a.mp4", n_frames=66, fps=30, size=(96, 64))
    b = make_video(videos / "b.mp4", n_frames=66, fps=30, size=(80, 60), pattern="noise", seed=1)
    manifest = root / "manifest.parquet"
    pq.write_table(pa.table({"video_id": ["a", "b"], "uri": [str(a), str(b)]}), manifest)
    out = root / "out"
    label_run(manifest, out)
    return {"out": out, "videos": videos, "cache": root / "cache", "root": root}


def _args(labeled, out=None, *extra):
    return [str(out or labeled["out"]), "--set", f"audit.cache_dir={labeled['cache']}", "--log-level", "WARNING",
            *extra]


def _audit_dir(out: Path, stdout: str) -> Path:
    line = [ln for ln in stdout.splitlines() if ln.startswith("report: ")][-1]
    path = Path(line.removeprefix("report: "))
    assert path.parent == out / "audits"
    return path


@pytest.mark.ray
@pytest.mark.slow
def test_onnxruntime_end_to_end(labeled):
    """The real CLI in a subprocess: exit 0, one Parquet row per clip, DuckDB joins it with clips."""
    out = labeled["out"]
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / "audit.py"), *_args(labeled, None, "--sample", "3",
                           "--backend", "onnxruntime")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert ": PASS" in proc.stdout and "| top-1 agreement | 1 |" in proc.stdout
    audit = _audit_dir(out, proc.stdout)
    rows = pq.read_table(audit / "clips.parquet").to_pylist()
    assert len(rows) == 3 and {r["input_status"] for r in rows} == {"ok"}
    assert all(r["redecoded_sha"] == r["clip_sha"] for r in rows)
    assert all(r["host_matches_label"] and r["top1_agree"] for r in rows)
    assert max(r["max_abs_diff"] for r in rows) < 1e-4 and min(r["psnr_db"] for r in rows) > 60
    assert all(len(r["host_logits"]) == 400 and r["host_label_id"] == r["label_id"] for r in rows)
    summary = json.loads((audit / "summary.json").read_text())
    assert summary["passed"] and summary["verified"] == 3 and summary["committed_clips"] == 4
    assert summary["backend"]["backend"] == "onnxruntime" and summary["weights"] == "random:seed=0"
    assert "|device - host|" in (audit / "summary.md").read_text()
    joined = duckdb.sql(
        f"SELECT a.video_id, a.clip_index, a.label, c.label AS stored, c.clip_sha = a.clip_sha AS same "
        f"FROM read_parquet('{out}/audits/*/clips.parquet', hive_partitioning=true) a "
        f"JOIN read_parquet('{out}/clips/part-*.parquet') c "
        f"USING (run_id, video_id, clip_index) WHERE a.audit_id = '{audit.name.split('=')[1]}'"
    ).fetchall()
    assert len(joined) == 3 and all(r[2] == r[3] and r[4] for r in joined)
    labeled["ort_audit"] = audit


@pytest.mark.ray
def test_replay_of_an_audits_device_outputs(labeled, capsys):
    """device_outputs.npz names its clips: replay re-audits exactly those, with the same numbers."""
    first = labeled.get("ort_audit")
    if first is None:
        pytest.skip("needs test_onnxruntime_end_to_end")
    # --sample is ignored: the file names its clips
    rc = _audit_cli().main(_args(labeled, None, "--backend", "replay", "--sample", "1",
                                 "--device-outputs", str(first / "device_outputs.npz")))
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    again = pq.read_table(_audit_dir(labeled["out"], stdout) / "clips.parquet").to_pylist()
    before = pq.read_table(first / "clips.parquet").to_pylist()
    assert [(r["video_id"], r["clip_index"]) for r in again] == [(r["video_id"], r["clip_index"]) for r in before]
    assert [r["device_logits"] for r in again] == [r["device_logits"] for r in before]
    assert again[0]["backend"] == "replay" and again[0]["runtime"].startswith("onnxruntime")


def _write_aihub_h5(path: Path, logits: np.ndarray) -> Path:
    """An output file as AI Hub's download_output_data(filename) writes it: batch-1 arrays."""
    from qai_hub.util.dataset_entries_converters import dataset_entries_to_h5

    with h5py.File(path, "w") as f:
        dataset_entries_to_h5({"class_probs": [row[None] for row in logits.astype(np.float32)]}, f)
    return path


@pytest.mark.ray
@pytest.mark.slow
def test_replay_of_aihub_h5_chunks(labeled, capsys, tmp_path):
    """AI Hub's h5 downloads (two chunks, positional): same --sample/--seed -> same clips."""
    first = labeled.get("ort_audit")
    if first is None:
        pytest.skip("needs test_onnxruntime_end_to_end")
    cli = _audit_cli()
    host = np.array([r["host_logits"] for r in pq.read_table(first / "clips.parquet").to_pylist()], np.float32)
    rng = np.random.default_rng(0)
    near = host + rng.normal(0, 1e-4, host.shape).astype(np.float32)  # a good float device
    files = [_write_aihub_h5(tmp_path / "job1.h5", near[:2]), _write_aihub_h5(tmp_path / "job2.h5", near[2:])]
    rc = cli.main(_args(labeled, None, "--sample", "3", "--backend", "replay", "--device-outputs", *map(str, files)))
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    psnr = [r["psnr_db"] for r in pq.read_table(_audit_dir(labeled["out"], stdout) / "clips.parquet").to_pylist()]
    assert 40 < min(psnr) < 120

    # A device that is off (noise of the logits' own size): thresholds missed -> exit 1.
    bad = _write_aihub_h5(tmp_path / "bad.h5", host + rng.normal(0, host.std(), host.shape).astype(np.float32))
    rc = cli.main(_args(labeled, None, "--sample", "3", "--backend", "replay", "--device-outputs", str(bad)))
    stdout = capsys.readouterr().out
    assert rc == 1 and ": FAIL" in stdout and "| PSNR dB (worst clip) |" in stdout and "**NO**" in stdout

    # Outputs for fewer clips than the audit verified: a clear user error.
    rc = cli.main(_args(labeled, None, "--sample", "3", "--backend", "replay", "--device-outputs", str(files[0])))
    err = capsys.readouterr().err
    assert rc == 2 and "hold 2 clips but 3 were verified" in err


def _relocated(labeled, dest: Path) -> Path:
    """A copy of the labeled output whose clips point at a copy of the videos (for tampering)."""
    videos = dest / "videos"
    shutil.copytree(labeled["videos"], videos)
    out = dest / "out"
    shutil.copytree(labeled["out"], out, ignore=shutil.ignore_patterns("audits"))
    for part in out.glob("clips/part-*.parquet"):
        t = pq.read_table(part)
        uris = [str(videos / Path(u).name) for u in t.column("uri").to_pylist()]
        t = t.set_column(t.schema.get_field_index("uri"), "uri", pa.array(uris, pa.string()))
        pq.write_table(t, part)
    return out


@pytest.mark.ray
def test_tampered_and_deleted_sources(labeled, capsys, tmp_path):
    cli = _audit_cli()
    out = _relocated(labeled, tmp_path)
    # a.mp4 re-encoded with other content after labeling; b.mp4 untouched.
    make_video(tmp_path / "videos" / "a.mp4", n_frames=66, fps=30, size=(96, 64), pattern="noise", seed=9)
    rc = cli.main(_args(labeled, out, "--sample", "4"))
    stdout = capsys.readouterr().out
    assert rc == 1 and "| unverified inputs | 2 | <= 0 | **NO** |" in stdout
    rows = pq.read_table(_audit_dir(out, stdout) / "clips.parquet").to_pylist()
    by_video = {v: [r for r in rows if r["video_id"] == v] for v in "ab"}
    assert {r["input_status"] for r in by_video["a"]} == {"sha_mismatch"}
    assert all("source changed since labeling" in r["input_error"] and r["host_logits"] is None for r in by_video["a"])
    assert all(r["redecoded_sha"] and r["redecoded_sha"] != r["clip_sha"] for r in by_video["a"])
    assert {r["input_status"] for r in by_video["b"]} == {"ok"} and all(r["top1_agree"] for r in by_video["b"])

    # b.mp4 deleted: a clear per-clip error; with the threshold relaxed the rest still passes.
    (tmp_path / "videos" / "b.mp4").unlink()
    make_video(tmp_path / "videos" / "a.mp4", n_frames=66, fps=30, size=(96, 64))  # a restored
    rc = cli.main(_args(labeled, out, "--sample", "4", "--set", "audit.thresholds.max_unverified=2"))
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    assert "source video gone since labeling" in stdout and "source_missing: 2" in stdout
    summary = json.loads((_audit_dir(out, stdout) / "summary.json").read_text())
    assert summary["verified"] == 2 and summary["input_status"] == {"ok": 2, "source_missing": 2}


@pytest.mark.ray
def test_nothing_to_audit(labeled, capsys, tmp_path):
    cli = _audit_cli()
    assert cli.main(_args(labeled, tmp_path / "empty")) == 2
    assert "no committed runs" in capsys.readouterr().err
    assert cli.main(_args(labeled, None, "--run-id", "nope")) == 2
    assert "run 'nope' is not committed" in capsys.readouterr().err
    assert cli.main(_args(labeled, None, "--backend", "replay")) == 2
    assert "needs --device-outputs" in capsys.readouterr().err


# -- qai-hub: the real client against the AI Hub emulator on 127.0.0.1 ----------------------
@pytest.fixture
def hub(tmp_path, monkeypatch):
    import qai_hub.util.session

    from tests.helpers.hub_emulator import HubEmulator

    with HubEmulator(part_size=48 * 2**20) as emu:
        monkeypatch.setenv("QAIHUB_CLIENT_INI", str(emu.write_client_ini(tmp_path / "client.ini")))
        monkeypatch.setattr(qai_hub.util.session, "BACKOFF_FACTOR", 0.001)
        yield emu


@pytest.mark.ray
@pytest.mark.slow
def test_qai_hub_backend_through_the_emulator(labeled, hub, capsys, tmp_path, monkeypatch):
    cli = _audit_cli()
    rc = cli.main(_args(labeled, None, "--sample", "3", "--backend", "qai-hub", "--device", DEVICE,
                        "--runtime", "tflite", "--chunk-clips", "2", "--profile"))
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    audit = _audit_dir(labeled["out"], stdout)
    summary = json.loads((audit / "summary.json").read_text())
    b = summary["backend"]
    assert b["backend"] == "qai-hub" and b["device"] == DEVICE and b["runtime"] == "tflite"
    assert [j["num_clips"] for j in b["inference_jobs"]] == [2, 1]  # chunked
    assert b["compile_job"]["job_id"] and b["compile_job"]["url"].startswith(hub.url)
    assert b["profile"]["inference_ms"] is not None
    assert b["compile_job"]["job_id"] in (audit / "summary.md").read_text()
    # the emulator runs ORT ("inf": identical)
    assert summary["passed"] and float(summary["metrics"]["psnr_db_min"]) > 60
    assert len(hub.jobs_of_kind("inference_job")) == 3  # 2 chunks + the profile job

    # `r2p1d export`'s device path (compile + profile job) on the graph the audit exported.
    from r2p1d_batch.audit.export_measure import on_device
    from r2p1d_batch.cli.export import print_on_device

    graph = next((labeled["cache"] / "onnx").glob("*.onnx"))
    res = on_device(graph, DEVICE, "qnn")
    print_on_device(res)  # what `r2p1d export` prints
    shown = capsys.readouterr().out
    assert res["compile_job"]["job_id"] in shown and res["profile"]["url"] in shown
    assert res["profile"]["inference_ms"] > 0 and "--target_runtime qnn_dlc" in res["compile_options"]

    # Unknown device: exit 2, close matches listed.
    rc = cli.main(_args(labeled, None, "--backend", "qai-hub", "--device", "Samsung Galaxy S24"))
    err = capsys.readouterr().err
    assert rc == 2 and "Unknown AI Hub device 'Samsung Galaxy S24'" in err and repr(DEVICE) in err
    # A failed compile job: exit 3 with the hub's reason and the job's URL.
    hub.fail_compile = "Failed to compile: op Conv3d is not supported"
    rc = cli.main(_args(labeled, None, "--backend", "qai-hub", "--device", DEVICE))
    err = capsys.readouterr().err
    assert rc == 3 and "Conv3d is not supported" in err and hub.url in err
    hub.reset_faults()
    # No token configured: exit 2, says how to configure one.
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(tmp_path / "missing.ini"))
    rc = cli.main(_args(labeled, None, "--backend", "qai-hub", "--device", DEVICE))
    err = capsys.readouterr().err
    assert rc == 2 and "qai-hub configure --api_token" in err
