"""The NVDEC lane on a machine without a GPU: what it does without NVDEC (every video decoded by
PyAV, rows say why), the GPU path's own logic (nvdec.NvdecDecoder.clips) driven by a CPU stand-in
for the GPU decoder library (the same clips and clip_sha as the CPU path), the per-video fallback
when the decoder fails mid-stream, the lane split, and decode.device=cuda refused with exit 2."""
from __future__ import annotations

import json
import logging
import subprocess
import sys

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from deltalake import DeltaTable

from r2p1d_batch import config
from r2p1d_batch.decoding.lanes import NVDEC_THEN_CPU, NvdecDecodeStage, NvdecLane, split_rows
from r2p1d_batch.decoding.nvdec import NvdecDecoder, NvdecError
from r2p1d_batch.decoding.pyav import VideoSource
from r2p1d_batch.decoding.sampling import plan_clips
from r2p1d_batch.decoding.stage import DecodeStage, decode_video
from r2p1d_batch.runs import commit

from tests.helpers import REPO
from tests.helpers.videos import make_video, make_yuv_video


class PyAVFrames:
    """A CPU stand-in for the GPU decoder library (nvdec.GpuFrames' interface): frames by
    presentation index as NV12 tensors, decoded by PyAV; optionally fails on its n-th call,
    like a decoder error mid-stream."""

    gives_nv12 = True

    def __init__(self, fail_on_call: int | None = None):
        self.calls, self.fail_on_call, self.sources = 0, fail_on_call, set()

    def frames(self, source, indices):
        self.calls += 1
        self.sources.add(source)
        if self.fail_on_call is not None and self.calls >= self.fail_on_call:
            raise NvdecError("CUVID_ERROR: decode failed (stand-in)")
        with av.open(str(source)) as c:
            frames = [f for _, f in zip(range(max(indices) + 1), c.decode(video=0))]
        out = []
        for i in indices:
            f = frames[i]
            y, u, v = (np.frombuffer(p, np.uint8).reshape(-1, p.line_size) for p in f.planes)
            h, w = f.height, f.width
            nv12 = np.zeros((h + h // 2, w), np.uint8)
            nv12[:h] = y[:h, :w]
            nv12[h:] = np.stack([u[: h // 2, : w // 2], v[: h // 2, : w // 2]], -1).reshape(h // 2, w)
            out.append(torch.from_numpy(nv12))
        return out


def _lane(frames) -> NvdecLane:
    dec = NvdecDecoder(frames=frames)
    dec.device = "cpu"  # the stand-in's frames live on the CPU
    return NvdecLane(dec)


def _rows(path, gpu=None, overrides=()):
    cfg = config.load(None, list(overrides))
    return list(decode_video({"video_id": "v", "uri": str(path)}, cfg, None, gpu)), cfg


def _h264(tmp_path, name="v.mp4", **kw):
    """Lossy H.264 (High profile, so NVDEC takes it) with moving gradients."""
    return make_yuv_video(tmp_path / name, kw.get("w", 160), kw.get("h", 96), pattern="gradient", n=kw.get("n", 90),
                          lossless=False, colorspace=kw.get("colorspace", 0), color_range=kw.get("color_range", 0))


@pytest.mark.parametrize("tags", [dict(), dict(colorspace=1, color_range=1), dict(colorspace=1, color_range=2)],
                         ids=["untagged", "bt709", "bt709-full"])
def test_gpu_path_gives_the_cpu_paths_clips(tmp_path, tags):
    """NvdecDecoder.clips (plan, NV12 -> RGB, resize, crop) with the stand-in == VideoSource.clips:
    same clip_sha, frame_pts and times; the row says nvdec."""
    path = _h264(tmp_path, **tags)
    frames = PyAVFrames()
    gpu_rows, _ = _rows(path, _lane(frames), ["sampling.stride_sec=0.5"])
    cpu_rows, _ = _rows(path, None, ["sampling.stride_sec=0.5"])
    clips = lambda rows: [r for r in rows if r["kind"] == "clip"]  # noqa: E731
    assert len(clips(gpu_rows)) == len(clips(cpu_rows)) >= 3
    for g, c in zip(clips(gpu_rows), clips(cpu_rows)):
        assert g["clip_sha"] == c["clip_sha"] and g["frame_pts"] == c["frame_pts"]
        assert g["start_sec"] == pytest.approx(c["start_sec"]) and g["end_sec"] == pytest.approx(c["end_sec"])
    video = gpu_rows[-1]
    assert video["status"] == "ok" and video["decoder"] == "nvdec" and video["decoder_note"] == ""
    assert cpu_rows[-1]["decoder"] == "cpu" and frames.sources == {str(path)}


def test_rotated_video_through_the_gpu_path(tmp_path):
    path = make_video(tmp_path / "r.mp4", n_frames=40, fps=30, size=(160, 96), pattern="moving", rotation=90)
    cfg = config.load(None, [])
    with VideoSource(str(path), str(path), cfg.decode) as v:
        windows = plan_clips(cfg.sampling, v.info.duration, v.info.fps)
        cpu = list(v.clips(windows))
        cpu_info = (v.info.width, v.info.height, v.info.rotation)
    with VideoSource(str(path), str(path), cfg.decode) as v:
        dec = NvdecDecoder(frames=PyAVFrames())
        dec.device = "cpu"
        gpu = list(dec.clips(str(path), v, windows, "bt601", False))
        assert (v.info.width, v.info.height, v.info.rotation) == cpu_info == (96, 160, 90)
    assert [c.sha for c in gpu] == [c.sha for c in cpu]


def test_unsupported_stream_goes_to_the_cpu_with_a_note(tmp_path):
    path = make_video(tmp_path / "l.mp4", n_frames=40, size=(96, 64))  # lossless: High 4:4:4 Predictive
    frames = PyAVFrames()
    rows, _ = _rows(path, _lane(frames))
    assert rows[-1]["status"] == "ok" and rows[-1]["decoder"] == "cpu"
    assert "High 4:4:4 Predictive" in rows[-1]["decoder_note"] and frames.calls == 0


def test_decoder_error_mid_stream_falls_back_for_the_rest(tmp_path):
    path = _h264(tmp_path, n=120)
    frames = PyAVFrames(fail_on_call=3)  # two clips from the "GPU", then the decoder fails
    gpu_rows, _ = _rows(path, _lane(frames), ["sampling.stride_sec=0.5"])
    cpu_rows, _ = _rows(path, None, ["sampling.stride_sec=0.5"])
    video = gpu_rows[-1]
    assert video["status"] == "ok" and video["decoder"] == NVDEC_THEN_CPU
    assert "NVDEC failed after 2 clips" in video["decoder_note"] and "CUVID_ERROR" in video["decoder_note"]
    got = sorted((r["clip_index"], r["clip_sha"]) for r in gpu_rows if r["kind"] == "clip")
    want = sorted((r["clip_index"], r["clip_sha"]) for r in cpu_rows if r["kind"] == "clip")
    assert got == want and video["num_clips"] == len(want)  # every clip exactly once

    frames = PyAVFrames(fail_on_call=1)  # fails at once: all on the CPU, decoder says cpu
    rows, _ = _rows(path, _lane(frames), ["sampling.stride_sec=0.5"])
    assert rows[-1]["decoder"] == "cpu" and "NVDEC failed after 0 clips" in rows[-1]["decoder_note"]


def test_nvdec_stage_without_nvdec_decodes_everything_on_the_cpu(tmp_path):
    """The lane's actor class on this GPU-less machine: same rows as the CPU lane, plus why."""
    a = _h264(tmp_path, "a.mp4")
    none = pa.array([None, None], pa.float64())
    batch = pa.table({"video_id": ["a", "gone"], "uri": [str(a), str(tmp_path / "gone.mp4")],
                      "start_sec": none, "end_sec": none})
    cfg = config.load(None, [])
    lane_rows = [r for t in NvdecDecodeStage(cfg)(batch) for r in t.to_pylist()]
    cpu_rows = [r for t in DecodeStage(cfg)(batch) for r in t.to_pylist()]
    assert [r["clip_sha"] for r in lane_rows] == [r["clip_sha"] for r in cpu_rows]
    videos = [r for r in lane_rows if r["kind"] == "video"]
    assert [v["status"] for v in videos] == ["ok", "error"]  # every manifest row -> one video row
    assert videos[0]["decoder"] == "cpu" and "NVDEC unavailable on this node" in videos[0]["decoder_note"]
    assert "no CUDA device" in videos[0]["decoder_note"]


def test_split_rows_shares():
    rows = [{"i": i} for i in range(10)]
    cpu, gpu = split_rows(rows, 0.3)
    assert len(gpu) == 3 and len(cpu) == 7 and sorted(r["i"] for r in cpu + gpu) == list(range(10))
    assert split_rows(rows, 0.0) == (rows, []) and split_rows(rows, 1.0) == ([], rows)
    cpu, gpu = split_rows(rows, 0.5)
    assert [r["i"] for r in gpu] == [1, 3, 5, 7, 9]


def test_config_decode_device():
    cfg = config.load(None, [])
    assert cfg.decode.device == "auto" and cfg.decode.nvdec.share == 0.5 and cfg.decode.nvdec.library == "auto"
    cuda = config.load(None, ["decode.device=cuda", "decode.nvdec.concurrency=[1, 4]"])
    assert cuda.decode.device == "cuda" and cuda.decode.nvdec.concurrency == (1, 4)
    with pytest.raises(config.ConfigError, match="decode.device"):
        config.load(None, ["decode.device=gpu"])
    with pytest.raises(config.ConfigError, match="decode.nvdec.share"):
        config.load(None, ["decode.nvdec.share=1.5"])


@pytest.mark.ray
@pytest.mark.slow
def test_label_job_cuda_without_gpu_exits_2_and_auto_runs_on_cpu(ray_local, tmp_path, capsys, caplog):
    """`r2p1d label` (what jobs/label.py runs) on the session's GPU-less local Ray, in process:
    decode.device=cuda stops before any work (exit 2, the message names decode.device, nothing
    committed); auto labels on the CPU and says so."""
    from r2p1d_batch.cli import main

    v = make_video(tmp_path / "a.mp4", n_frames=40, fps=30, size=(96, 64))
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"video_id": ["a"], "uri": [str(v)]}), manifest)
    base = ["label", str(manifest), "--set", "model.weights=random", "--set", "ray.progress_bars=false"]
    out = tmp_path / "out"
    assert main(base + ["--output", str(out), "--set", "decode.device=cuda"]) == 2
    err = capsys.readouterr().err
    assert "decode.device=cuda" in err and "no GPU" in err
    assert not list(out.glob("*/part-*")) and not (out / "runs").exists()
    caplog.set_level(logging.INFO, logger="r2p1d_batch")  # --log-level INFO: pytest's handlers own the root
    assert main(base + ["--output", str(out), "--log-level", "INFO"]) == 0
    stdout = capsys.readouterr().out
    assert "decode.device=auto: the Ray cluster has no GPU" in caplog.text
    assert "decode.device cpu: videos decoded by cpu 1" in stdout
    videos = DeltaTable(str(out / "videos")).to_pyarrow_table().to_pylist()
    assert [(r["decoder"], r["decoder_note"]) for r in videos] == [("cpu", "")]
    record = commit.committed_runs(str(out))[0]
    assert record["decode_device"] == "cpu" and record["videos_by_decoder"] == {"cpu": 1}


RAY_WITH_A_GPU_RESOURCE = r'''
import json, sys
import ray
from r2p1d_batch import config
from r2p1d_batch.decoding.choice import DecodeDeviceError
from r2p1d_batch.decoding.lanes import decode_device, split_rows
from r2p1d_batch.decoding.stage import DecodeStage
from r2p1d_batch.pipeline import nvdec_lane
from r2p1d_batch.planning.placement import task_pool

# A local Ray that advertises one GPU on this GPU-less machine: the driver sees a GPU cluster,
# the probe task runs on the "GPU node" and finds no CUDA device there.
ray.init(address="local", num_cpus=2, num_gpus=1, object_store_memory=200 * 2**20, include_dashboard=False,
         log_to_driver=False)
out = {"auto": decode_device(config.load(None, []))}
try:
    decode_device(config.load(None, ["decode.device=cuda"]))
except DecodeDeviceError as e:
    out["cuda_error"] = str(e)
# The two lanes, merged as pipeline._labeled merges them (the NVDEC lane without NVDEC here).
cfg = config.load(None, ["decode.nvdec.share=0.5", "decode.nvdec.num_gpus=0.25"])
rows = [{"video_id": f"v{i}", "uri": u, "start_sec": None, "end_sec": None} for i, u in enumerate(sys.argv[1:])]
cpu_rows, gpu_rows = split_rows(rows, cfg.decode.nvdec.share)
ds = ray.data.from_items(cpu_rows).map_batches(DecodeStage(cfg, "r"), batch_size=1, batch_format="pyarrow",
                                               compute=task_pool(None))
ds = ds.union(nvdec_lane(ray.data.from_items(gpu_rows), cfg, "r", None))
batches = ds.iter_batches(batch_size=None, batch_format="pyarrow")
got = [r for b in batches for r in b.drop_columns(["frames"]).to_pylist()]
out["videos"] = sorted((r["video_id"], r["status"], r["decoder"], r["decoder_note"])
                       for r in got if r["kind"] == "video")
out["clips"] = sorted((r["video_id"], r["clip_index"], r["clip_sha"]) for r in got if r["kind"] == "clip")
print("RESULT " + json.dumps(out))
'''


@pytest.mark.ray
@pytest.mark.slow
def test_gpu_cluster_without_nvdec_and_the_two_lanes_on_ray(tmp_path, job_env):
    """A real local Ray advertising a GPU: auto falls back to the CPU, cuda exits 2 naming the
    reason from the GPU node's probe; the NVDEC lane (actor pool, GPU fraction) merged with the CPU
    lane gives every video exactly once, with the same clips as the CPU path."""
    paths = [str(_h264(tmp_path, f"v{i}.mp4", n=40)) for i in range(4)]
    proc = subprocess.run([sys.executable, "-c", RAY_WITH_A_GPU_RESOURCE, *paths], cwd=REPO, env=job_env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    res = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    assert res["auto"] == "cpu"
    want_error = "decode.device=cuda but NVDEC is unavailable on the GPU nodes: torch sees no CUDA device"
    assert want_error in res["cuda_error"]
    videos = res["videos"]
    assert [v[0] for v in videos] == ["v0", "v1", "v2", "v3"] and {v[1] for v in videos} == {"ok"}
    lane = [v for v in videos if v[3]]
    assert [v[0] for v in lane] == ["v1", "v3"]  # share 0.5: every second video went to the NVDEC lane
    assert all(v[2] == "cpu" and "NVDEC unavailable on this node" in v[3] for v in lane)
    cfg = config.load(None, [])
    want = sorted((f"v{i}", r["clip_index"], r["clip_sha"]) for i, p in enumerate(paths)
                  for r in decode_video({"video_id": f"v{i}", "uri": p}, cfg) if r["kind"] == "clip")
    assert [tuple(c) for c in res["clips"]] == want
