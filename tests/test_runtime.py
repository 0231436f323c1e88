"""ONNX Runtime vs PyTorch eager parity, runtime selection, ONNX export cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from r2p1d_batch import config
from r2p1d_batch.classifying.classifier import ClipClassifier, resolve_runtime
from r2p1d_batch.classifying.export import cached_export


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
