"""ONNX Runtime vs PyTorch eager parity, runtime selection, ONNX export cache, the actor that
starts without torch."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from r2p1d_batch import config
from r2p1d_batch.classifying.classifier import ClipClassifier, cached_cpu_graph, resolve_runtime
from r2p1d_batch.classifying.export import cached_export
from r2p1d_batch.classifying.scores import softmax

from tests.helpers import REPO


@pytest.fixture(scope="module")
def clips():
    return np.random.default_rng(1).integers(0, 256, (2, 16, 112, 112, 3), dtype=np.uint8)


pytestmark = pytest.mark.usefixtures("onnx_cache")  # conftest: exports into a fresh cache


def _clf(runtime: str) -> ClipClassifier:
    return ClipClassifier(config.load(None, ["model.weights=random", "model.seed=3", f"model.runtime={runtime}",
                                             "model.device=cpu", "model.num_cpus=2"]).model)


def test_onnxruntime_matches_torch_eager(clips):
    ort_clf, torch_clf = _clf("onnxruntime"), _clf("torch")
    assert ort_clf.runtime == "onnxruntime-cpu-fp32" and torch_clf.runtime == "torch-cpu-fp32"
    a, b = ort_clf.logits(clips), torch_clf.logits(clips)
    assert a.shape == b.shape == (2, 400)
    assert float(np.abs(a - b).max()) <= 1e-4
    sa, sb = ort_clf(clips), torch_clf(clips)
    assert np.array_equal(sa.topk_ids, sb.topk_ids)
    assert ort_clf.weights_id == torch_clf.weights_id == "random:seed=3"


def test_auto_runtime_is_onnxruntime_on_cpu():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_runtime("auto", cpu) == "onnxruntime"
    assert resolve_runtime("auto", cuda) == "torch"
    assert resolve_runtime("torch", cpu) == "torch"
    with pytest.raises(ValueError, match="runs on CPU"):
        resolve_runtime("onnxruntime", cuda)
    assert config.load().model.runtime == "auto"
    with pytest.raises(config.ConfigError):
        config.load(None, ["model.runtime=tensorrt"])


def test_export_cached_once_per_weights(tmp_path):
    from r2p1d_batch.classifying.model import load_model

    m = load_model("random", 0)
    p1 = cached_export(m.module, "random:seed=0", graph="uint8", root=tmp_path)
    mtime = p1.stat().st_mtime_ns
    p2 = cached_export(m.module, "random:seed=0", graph="uint8", root=tmp_path)
    p3 = cached_export(m.module, "random:seed=1", graph="uint8", root=tmp_path)
    assert p1 == p2 and p2.stat().st_mtime_ns == mtime and p3 != p1
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted({p1.name, p3.name})  # no temp files left


def test_batch_size_defaults_per_device():
    assert config.load().model.effective_batch_size == config.CPU_BATCH_SIZE
    assert config.load(None, ["model.num_gpus=1"]).model.effective_batch_size == config.GPU_BATCH_SIZE
    assert config.load(None, ["model.num_gpus=1", "model.batch_size=16"]).model.effective_batch_size == 16


def test_softmax_matches_torch():
    logits = np.random.default_rng(0).normal(0, 8, (6, 400)).astype(np.float32)
    got = softmax(logits)
    want = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    assert got.dtype == np.float32 and float(np.abs(got - want).max()) <= 1e-6
    assert np.allclose(got.sum(1), 1.0, atol=1e-6) and np.array_equal(got.argmax(1), want.argmax(1))


_TORCH_FREE = """
import json, sys
import numpy as np
from r2p1d_batch import config
from r2p1d_batch.classifying.classifier import ClipClassifier
cfg = config.load(None, ["model.weights=random", "model.seed=3", "model.device=auto", "model.num_cpus=2"])
clf = ClipClassifier(cfg.model, weights_id=sys.argv[1])
s = clf(np.random.default_rng(1).integers(0, 256, (2, 16, 112, 112, 3), dtype=np.uint8))
print(json.dumps({"torch": "torch" in sys.modules, "runtime": clf.runtime, "weights_id": clf.weights_id,
                  "is_random": clf.is_random, "probs": s.probs.tolist(), "ids": s.topk_ids.tolist()}))
"""


def _fresh_classifier(weights_id: str) -> dict:
    """ClipClassifier in a fresh Python (its own imports), given the driver's weights id."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([sys.executable, "-c", _TORCH_FREE, weights_id], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_cpu_actor_with_a_cached_export_never_imports_torch(clips, tmp_path):
    """Given the driver's weights id and a cached export, the classifier opens ONNX Runtime and
    scores without importing torch, with the scores of the export path; without a cached
    export (another id's cache is empty) it loads the model as before."""
    cfg = config.load(None, ["model.weights=random", "model.seed=3", "model.device=cpu", "model.num_cpus=2"])
    want = ClipClassifier(cfg.model)(clips)  # exports random:seed=3 into this module's cache
    assert cached_cpu_graph(cfg.model, "random:seed=3", embeddings=False) is not None
    assert cached_cpu_graph(cfg.model, "random:seed=97", embeddings=False) is None  # never exported
    assert cached_cpu_graph(cfg.model.model_copy(update={"runtime": "torch"}), "random:seed=3", False) is None
    got = _fresh_classifier("random:seed=3")
    assert not got["torch"] and got["runtime"] == "onnxruntime-cpu-fp32"
    assert (got["weights_id"], got["is_random"]) == ("random:seed=3", True)
    assert np.array_equal(np.array(got["probs"], np.float32), want.probs)
    assert np.array_equal(got["ids"], want.topk_ids)
    # A checkpoint's id with nothing cached: torch loads the checkpoint (the id is only a key).
    ckpt = tmp_path / "ckpt.pth"
    from r2p1d_batch.classifying.model import load_model, weights_id

    torch.save(load_model("random", 3).module.state_dict(), ckpt)
    assert cached_cpu_graph(cfg.model, weights_id(str(ckpt)), embeddings=False) is None
