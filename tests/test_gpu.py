"""The CUDA path: ClipClassifier on a GPU against the CPU reference, and jobs/label.py with a
GPU classifier actor against the same job on CPU. Runs where torch sees a CUDA device
(`pytest -m gpu` on a GPU machine); skipped on CPU-only machines such as CI."""
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from r2p1d_batch import config as config_mod
from r2p1d_batch.classifying.classifier import ClipClassifier

from tests.helpers import REPO
from tests.helpers.videos import make_video

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _classifier(*overrides):
    return ClipClassifier(config_mod.load(None, ["model.weights=random", *overrides]).model)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def clips_and_reference():
    # Smooth, structured clips (noise gives near-uniform logits that say little about precision).
    t, y, x = np.meshgrid(np.arange(16), np.arange(112), np.arange(112), indexing="ij")
    clips = np.stack([np.stack([(x * (i + 1) + t * 7) % 256, (y * 3 + t * (i + 2)) % 256, (x + y + 40 * i) % 256], -1)
                      for i in range(12)]).astype(np.uint8)
    ref = _classifier("model.device=cpu", "model.runtime=torch", "model.num_cpus=4").logits(clips)
    return clips, ref


@pytest.mark.parametrize("amp, min_cosine, max_rel",
                         [("none", 0.99999, 1e-4), ("fp16", 0.9999, 1e-2), ("bf16", 0.99, 5e-2)])
def test_cuda_logits_match_cpu_fp32(clips_and_reference, amp, min_cosine, max_rel):
    clips, ref = clips_and_reference
    clf = _classifier("model.device=cuda", f"model.amp={amp}")
    assert clf.runtime == f"torch-cuda-{amp}"
    conv = next(m for m in clf.net.modules() if isinstance(m, torch.nn.Conv3d) and m.kernel_size[1] > 1)
    assert conv.weight.is_cuda and conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.backends.cudnn.benchmark
    assert torch.backends.cudnn.allow_tf32 == (amp != "none")
    out = clf.logits(clips)
    rel = np.abs(out - ref).max() / np.abs(ref).max()
    cos = _cosine(out, ref).min()
    top1 = (out.argmax(1) == ref.argmax(1)).mean()
    print(f"amp={amp}: max|d|/max|ref|={rel:.2e} min cosine={cos:.6f} top1 agreement={top1:.2f}")
    assert rel <= max_rel and cos >= min_cosine
    # The scores path (softmax + top-k on the host) takes the same logits.
    s = clf(clips[:3])
    assert s.probs.shape == (3, 400) and np.allclose(s.probs.sum(1), 1, atol=1e-4)


def test_label_job_on_a_gpu_actor_matches_the_cpu_job(tmp_path):
    videos = [make_video(tmp_path / f"v{i}.mp4", n_frames=75, fps=25, size=(320, 240), pattern="noise")
              for i in range(3)]
    import pyarrow as pa

    manifest = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({"uri": [str(v) for v in videos], "video_id": [f"v{i}" for i in range(3)]}), manifest)
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {"PYTHONPATH": pythonpath, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "RAY_USAGE_STATS_ENABLED": "0"}

    def label(out, *overrides):
        cmd = [sys.executable, str(REPO / "jobs" / "label.py"), str(manifest), "--output", str(out),
               "--set", "model.weights=random", "--set", "ray.num_cpus=4", "--set", "ray.progress_bars=false",
               *[a for o in overrides for a in ("--set", o)]]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        return pq.read_table(out / "clips").sort_by([("video_id", "ascending"), ("clip_index", "ascending")])

    gpu = label(tmp_path / "gpu", "model.num_gpus=1", "model.device=cuda", "model.batch_size=16")
    cpu = label(tmp_path / "cpu", "model.device=cpu")
    assert gpu.num_rows == cpu.num_rows >= 6  # about one clip per second of video
    assert set(gpu.column("runtime").to_pylist()) == {"torch-cuda-bf16"}
    assert set(cpu.column("runtime").to_pylist()) == {"onnxruntime-cpu-fp32"}
    # The same decode on both: identical clip bytes; scores agree to bf16 precision.
    assert gpu.column("clip_sha").to_pylist() == cpu.column("clip_sha").to_pylist()
    sg, sc = (np.array(t.column("topk_scores").to_pylist()) for t in (gpu, cpu))
    assert np.abs(sg - sc).max() < 0.02
    for g, c in zip(gpu.column("topk_ids").to_pylist(), cpu.column("label_id").to_pylist()):
        assert c in g  # near-ties may swap places in bf16, never leave the top 5
