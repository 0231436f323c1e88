"""Benchmark pieces: ffmpeg command lines, report formatting, the roofline, the e2e row
arithmetic, a tiny smoke run, and the decode-path changes the benchmark drove (shared swscale
context, swscale knob)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from r2p1d_batch import config
from r2p1d_batch.bench.decode import ffmpeg_cmd
from r2p1d_batch.bench.e2e import pipeline_row
from r2p1d_batch.bench.levers import BEFORE, LEVERS
from r2p1d_batch.bench.output import format_report, format_table, ratio
from r2p1d_batch.bench.roofline import model_gflop_per_clip, needed_note, sgemm_gflops
from r2p1d_batch.decoding.pyav import VideoSource
from r2p1d_batch.decoding.sampling import plan_clips
from r2p1d_batch.runs import commit
from r2p1d_batch.runs.summary import RunSummary

from tests.helpers import REPO as ROOT
from tests.helpers.videos import make_video


def test_ffmpeg_cmd_full_size_and_scaled():
    full = ffmpeg_cmd("/v.mp4", 2, seconds=10)
    assert full[full.index("-threads") + 1] == "2" and full[full.index("-filter_threads") + 1] == "2"
    assert full.index("-t") < full.index("-i")  # an input option: decode only 10 s
    assert "-vf" not in full and full[full.index("-pix_fmt") + 1] == "rgb24" and full[-3:] == ["-f", "null", "-"]
    scaled = ffmpeg_cmd("/v.mp4", 1, scale=(171, 128))
    assert scaled[scaled.index("-vf") + 1] == "scale=171:128:flags=bilinear" and "-t" not in scaled


def test_format_table_and_report():
    rows = [{"a": "x", "b": 1234.5, "c": None}, {"a": "longer", "b": 0.00012, "d": 2.5}]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["a", "b", "c", "d"]
    assert lines[2].split() == ["x", "1234", "-", "-"] and lines[3].split() == ["longer", "1.2e-04", "-", "2.50"]
    text = format_report({"machine": {"cores": 2}, "sections": {"model": {"rows": rows, "notes": ["n1"]}}})
    assert "== model ==" in text and "note: n1" in text
    assert ratio(2.0, 4.0) == 0.5 and ratio(1.0, None) is None and ratio(0.0, 1.0) is None


def test_model_gflop_per_clip():
    """R(2+1)D-18 at 16x112x112: 81.0 GFLOP (2 x multiply-adds), counted from the graph."""
    g = model_gflop_per_clip()
    assert 80.0 <= g <= 82.0
    assert model_gflop_per_clip(8) == pytest.approx(g / 2, rel=0.01)  # temporal size halves every layer's output


def test_sgemm_gflops_keeps_the_thread_count():
    import torch

    before = torch.get_num_threads()
    assert sgemm_gflops(1, n=128, seconds=0.05) > 0
    assert torch.get_num_threads() == before
    assert needed_note(200.0, 320.0, 2) == ("2x eager would need 400 GFLOP/s = 125% of the measured fp32 matmul "
                                            "peak (320 GFLOP/s at 2 threads)")


def test_pipeline_row_against_stages_and_naive_bound():
    s = RunSummary(run_id="r", output="o", clips=40, first_clip_sec=12.0, steady_clips_per_sec=2.4)
    row = pipeline_row("cpu.yaml", 40, 25.0, s, decode_cps=20.0, model_cps=2.5, naive_cps=2.0)
    assert row["clips_per_s"] == pytest.approx(1.6) and row["vs_slowest_stage"] == pytest.approx(1.6 / 2.5)
    assert row["vs_naive"] == pytest.approx(0.8) and row["steady_vs_slowest"] == pytest.approx(2.4 / 2.5)
    assert row["max_vs_naive"] == pytest.approx(2.5 / 2.0)  # the slowest stage bounds any pipeline
    assert row["first_clip_s"] == 12.0
    one_block = pipeline_row("default", 8, 10.0, RunSummary(run_id="r", output="o", clips=8), 20.0, 1.0, 2.0)
    assert one_block["steady_clips_per_s"] is None and one_block["steady_vs_slowest"] is None


@pytest.mark.slow
def test_bench_tiny_smoke(tmp_path):
    out = tmp_path / "b.json"
    r = subprocess.run([sys.executable, str(ROOT / "jobs" / "bench.py"), "--tiny",
                        "--only", "decode", "--only", "sparse", "--only", "model", "--only", "levers",
                        "--only", "curate",
                        "--inputs", str(tmp_path / "in"), "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    rows = res["sections"]["decode"]["rows"]
    assert {x["scaler"] for x in rows} == {"exact", "cv2", "swscale"} and all(x["ours_fps"] > 0 for x in rows)
    assert res["sections"]["sparse"]["rows"][0]["clips"] == 5
    assert "== decode ==" in r.stdout
    model = res["sections"]["model"]
    *runtimes, roof = model["rows"]
    assert [x["runtime"] for x in runtimes] == ["torch-cpu-fp32 (eager)", "torch-cpu-fp32 channels_last_3d",
                                                "onnxruntime-cpu-fp32",
                                                "onnxruntime-cpu-int8 (QDQ, per-channel, fc fp32)"]
    for x in runtimes:
        assert x["batches"] >= 1 and x["gflops"] == pytest.approx(x["clips_per_s"] * model_gflop_per_clip())
        assert x["pct_of_sgemm_peak"] == pytest.approx(100 * x["gflops"] / roof["gflops"])
    assert runtimes[2]["max_abs_dlogit"] <= 1e-4
    assert roof["runtime"].startswith("roofline") and roof["gflops"] > 0 and roof["pct_of_sgemm_peak"] == 100.0
    assert any("2x eager would need" in n for n in model["notes"])
    assert all(sec["wall_s"] > 0 for sec in res["sections"].values())
    levers = {x["setting"]: x for x in res["sections"]["levers"]["rows"]}
    assert set(levers) == {"codec (CRF 23) vs its source", *LEVERS}
    assert levers[BEFORE]["speedup"] == 1.0 and levers[BEFORE]["psnr_db"] is None
    default = levers["exact (defaults: crop taps, skip unused frames)"]
    assert default["max_abs"] == 0 and default["in_budget"]
    assert default["frames_decoded"] < levers[BEFORE]["frames_decoded"]
    nonref = levers["exact + skip_frames=nonref"]
    assert nonref["max_shift_ms"] > 0 and not nonref["in_budget"]
    assert levers["configs/cluster.yaml"]["in_budget"] and levers["cv2"]["max_abs"] <= 1
    assert all(x["clips_per_s_per_core"] > 0 for k, x in levers.items() if k in LEVERS)
    curate = res["sections"]["curate"]  # --only curate: the duplicate report, storage, the embedding's cost
    assert "== curate ==" in r.stdout
    assert [x["clips"] for x in curate["rows"]] == [2000] and all(x["planted_found"] == x["planted"] > 0
                                                                  for x in curate["rows"])
    assert curate["storage"]["raw_bytes_per_clip"] == 2048 and curate["storage"]["parquet_zstd_bytes_per_clip"] > 0
    cost = curate["model"]
    assert cost["logits_max_abs_diff_vs_logits_only_graph"] <= 1e-4
    assert cost["ort_vs_eager_embedding"]["min_cosine"] > 0.9999
    assert all(v > 0 for v in cost["clips_per_s"].values())


def test_bench_cli_prints_each_section_and_names_the_node_file(tmp_path, monkeypatch, capsys):
    """The suite returns figures; `r2p1d bench` prints each section's table, rewrites the JSON after
    it, and names the node section's own file (written only when a row was measured)."""
    from r2p1d_batch.bench import node
    from r2p1d_batch.cli import main

    row = {**dict.fromkeys(node.ROW_KEYS), "resolution": "360p", "decoder": "nvdec", "clips_per_sec": 9.5}
    monkeypatch.setattr(node, "node_rows", lambda *a, **k: ([row], ["measured"]))
    out = tmp_path / "b.json"
    assert main(["bench", "--tiny", "--only", "node", "--out", str(out)]) == 0
    shown = capsys.readouterr().out
    gpu = tmp_path / "bench-gpu.json"
    assert shown.index("== node ==") < shown.index(f"wrote {gpu}\n") < shown.index(f"\nwrote {out} (")
    assert "  note: measured" in shown and "9.50" in shown
    assert json.loads(gpu.read_text())["node"] == [row]
    res = json.loads(out.read_text())
    assert res["mode"] == "tiny" and list(res["sections"]) == ["node"] and res["wall_s"] >= 0
    assert set(res["sections"]["node"]) == {"rows", "notes", "wall_s"}


def _clips(path, scaler):
    cfg = config.load(None, [f"decode.scaler={scaler}"])
    with VideoSource(str(path), str(path), cfg.decode) as v:
        return [c.frames for c in v.clips(plan_clips(cfg.sampling, v.info.duration, v.info.fps))]


@pytest.mark.parametrize("rotation", [0, 90])
def test_swscale_knob_close_to_exact(tmp_path, rotation):
    p = make_video(tmp_path / "v.mp4", n_frames=40, fps=30, size=(320, 240), rotation=rotation)
    exact, fast = _clips(p, "exact"), _clips(p, "swscale")
    assert len(exact) == len(fast) >= 1
    for a, b in zip(exact, fast):
        assert a.shape == b.shape == (16, 112, 112, 3)
        # Flat grey frames: the scalers agree away from the marker's edges.
        assert np.abs(a[:, 60:, 60:].astype(int) - b[:, 60:, 60:]).max() <= 2


def test_exact_path_matches_preset(tmp_path):
    """The shared reformatter and thread limit changed nothing: clips equal torchvision's preset."""
    import av
    import torch

    from r2p1d_batch.decoding.preprocess import preset, torch_threads

    p = make_video(tmp_path / "n.mp4", n_frames=20, fps=15, size=(200, 150), pattern="noise")
    clip = _clips(p, "exact")[0]
    with av.open(str(p)) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)][:16])
    pre = preset()
    import torchvision.transforms.functional as TF

    x = torch.from_numpy(frames).permute(0, 3, 1, 2)
    # The preset on one torch thread, as the decode stage runs it: torch's CPU bilinear kernel
    # rounds differently when a call is split over threads (a pixel may move by 1 level).
    with torch_threads(1):
        ref = TF.center_crop(TF.resize(x, list(pre.resize_size), interpolation=pre.interpolation, antialias=False),
                             list(pre.crop_size)).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(clip, ref)


def test_peak_rss_splits_the_process_tree_by_role():
    """The memory section's sampler: a child whose title names the decode stage counts as decode."""
    from r2p1d_batch.bench.memory import peak_rss

    child = "import time; x = bytearray(64 << 20); time.sleep(2.0)  # ray::MapBatches(DecodeStage)"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}])"
    total, by_role, wall, rc = peak_rss([sys.executable, "-c", parent], interval=0.05)
    assert rc == 0 and wall >= 2.0
    assert by_role["decode"] >= 64 << 20 and by_role["driver"] < by_role["decode"]
    assert total >= by_role["decode"] + by_role["driver"] - (1 << 20)


def test_gpu_only_model_section_skips_the_cpu_runtimes():
    """--gpu-only: eager (the reference) and the CUDA rows only; on a CPU machine just eager."""
    import torch

    from r2p1d_batch.bench.model import runtime_rows

    rows, _ = runtime_rows(1, 1, 0.0, 1, gpu_only=True)
    names = [r["runtime"] for r in rows]
    assert names[0] == "torch-cpu-fp32 (eager)" and names[-1].startswith("roofline")
    assert not any("onnxruntime" in n or "channels_last_3d" in n and "cuda" not in n for n in names)
    assert any("cuda" in n for n in names) == torch.cuda.is_available()


@pytest.mark.slow
@pytest.mark.ray  # the 1%-changed run starts Ray in its child process
def test_bench_scale_section_measures_the_plan_and_the_write_path(tmp_path, capsys):
    """`r2p1d bench --only scale`: a skip-all rerun through pipeline.label in a fresh process
    starts no Ray and labels nothing (its empty record dropped, the generated output kept as
    it was); a 1%-changed run reaches its first rows; the write path has a row per case."""
    from r2p1d_batch.cli import main

    out = tmp_path / "b.json"
    assert main(["bench", "--tiny", "--only", "scale", "--inputs", str(tmp_path / "in"), "--out", str(out)]) == 0
    assert "== scale ==" in capsys.readouterr().out
    rows = json.loads(out.read_text())["sections"]["scale"]["rows"]
    skip, changed = [r for r in rows if r["part"] == "plan"]
    assert (skip["case"], skip["rows"], skip["ray_started"]) == ("skip-all rerun", 2000, False)
    assert skip["wall_s"] > 0 and skip["peak_rss_gib"] > 0
    generated = commit.committed_runs(str(tmp_path / "in" / "scale" / "delta-out-2000"))
    assert [r["videos"] for r in generated] == [2000, 0]  # the synthesized run, then the skip-all rerun
    assert (changed["case"], changed["to_label"], changed["ray_started"]) == ("1% changed", 20, True)
    assert 0 < changed["execution_start_s"] <= changed["first_rows_s"]
    writes = [r for r in rows if r["part"] == "write"]
    assert len(writes) == 7 and all(r["driver_us_per_clip"] > 0 for r in writes)


@pytest.mark.slow
def test_history_section_keeps_one_labeling_per_video_and_maintenance_bounds_the_files(tmp_path):
    from r2p1d_batch.bench.history import history_rows

    rows, notes = history_rows(120, 2, 5, 0.1, 60, tmp_path, maintain_every=2, workers=1)
    first, last, maintained = rows
    assert [r["clip_rows"] for r in rows] == [240, 240, 240]  # relabels replace rows, never add
    assert last["nightly_bytes_rewritten_median"] > 0 and last["driver_peak_rss_gib"] > 0
    assert last["nightly_commit_s_median"] >= last["nightly_driver_own_s_median"] > 0
    assert "maintain_between_nights_s_median" in last and "every 2 nights" in notes[0]
    # the final maintain compacted and vacuumed (at this size the version it keeps for the newest
    # run holds a whole table's worth of files: the 1.2x figure is measured at scale, docs/tables.md)
    assert last["files_on_disk"] > maintained["files_on_disk"] and last["bytes_on_disk"] > maintained["bytes_on_disk"]
    assert maintained["data_files"] <= first["data_files"]
    assert maintained["expired_runs"] >= 1
