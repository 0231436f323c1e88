"""Weights loading: checkpoints the tests write, the hub-cache path, random, and failures."""
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models.video import r2plus1d_18

from r2p1d_batch.classifying.classifier import ClipClassifier
from r2p1d_batch.classifying.model import (
    KINETICS,
    WeightsError,
    categories,
    kinetics_checkpoint_path,
    load_model,
    normalization,
)
from r2p1d_batch.classifying.scores import topk
from r2p1d_batch.config import ModelConfig


@pytest.fixture(scope="module")
def state():
    torch.manual_seed(123)
    return r2plus1d_18(weights=None, num_classes=400).state_dict()


def _same(module, state):
    got = module.state_dict()
    return all(torch.equal(got[k], v) for k, v in state.items())


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "module_prefix"])
def test_checkpoint_formats(tmp_path, state, wrap):
    obj = {"plain": state, "state_dict": {"state_dict": state, "epoch": 3},
           "module_prefix": {f"module.{k}": v for k, v in state.items()}}[wrap]
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    m = load_model(str(path))
    assert _same(m.module, state) and not m.is_random
    assert m.weights_id.startswith("file:ckpt.pth@sha256:")
    assert not m.module.training


def test_kinetics_loads_from_the_hub_cache(tmp_path, monkeypatch, state):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = kinetics_checkpoint_path()
    assert str(path).startswith(str(tmp_path)) and path.name == KINETICS.url.rsplit("/", 1)[1]
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    m = load_model("kinetics400")
    assert _same(m.module, state)
    assert m.weights_id == "torchvision:R2Plus1D_18_Weights.KINETICS400_V1"


def test_kinetics_offline_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # No network here: make the download fail fast and deterministically.
    monkeypatch.setattr(type(KINETICS), "get_state_dict",
                        lambda self, **kw: (_ for _ in ()).throw(OSError("network unreachable")))
    with pytest.raises(WeightsError) as e:
        load_model("kinetics400")
    assert str(kinetics_checkpoint_path()) in str(e.value) and "model.weights=random" in str(e.value)


def test_random_is_seeded_and_marked():
    a, b, c = load_model("random", seed=1), load_model("random", seed=1), load_model("random", seed=2)
    assert a.is_random and a.weights_id == "random:seed=1"
    assert _same(a.module, b.module.state_dict()) and not _same(a.module, c.module.state_dict())


def test_bad_checkpoints(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_model(str(tmp_path / "missing.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a PyTorch checkpoint"):
        load_model(str(junk))
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(WeightsError, match="not r2plus1d_18"):
        load_model(str(wrong))


def test_categories_and_normalization_come_from_torchvision():
    """The torch-free facts (classifying/weights.py) are torchvision's: the 400 names in order,
    the checkpoint's file name, the crop, the id; the hub directory follows torch.hub's rule."""
    from r2p1d_batch.classifying import weights
    from r2p1d_batch.decoding.preprocess import FrameTransform

    assert categories() == tuple(KINETICS.meta["categories"]) and len(categories()) == 400
    p = KINETICS.transforms()
    assert normalization() == (tuple(p.mean), tuple(p.std))
    assert KINETICS.url.rsplit("/", 1)[1] == weights.KINETICS_FILE
    assert weights.CROP == FrameTransform.from_preset().crop == tuple(p.crop_size)
    assert f"torchvision:{type(KINETICS).__name__}.{KINETICS.name}" == weights.KINETICS_ID


@pytest.mark.parametrize("env", [{}, {"XDG_CACHE_HOME": "xdg"}, {"TORCH_HOME": "th", "XDG_CACHE_HOME": "xdg"}])
def test_kinetics_checkpoint_path_is_torch_hubs(tmp_path, monkeypatch, env):
    monkeypatch.setenv("HOME", str(tmp_path))
    for k in ("TORCH_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, str(tmp_path / v))
    assert kinetics_checkpoint_path() == Path(torch.hub.get_dir()) / "checkpoints" / KINETICS.url.rsplit("/", 1)[1]


def test_topk_orders_best_first():
    probs = np.array([[0.1, 0.5, 0.2, 0.2]], np.float32)
    ids, scores = topk(probs, 3)
    assert ids.tolist() == [[1, 2, 3]] and scores[0].tolist() == pytest.approx([0.5, 0.2, 0.2])


def test_classifier_on_cpu_is_deterministic():
    clf = ClipClassifier(ModelConfig(weights="random", seed=0, topk=5, runtime="torch"))
    rng = np.random.default_rng(0)
    clips = rng.integers(0, 256, (2, 16, 112, 112, 3), dtype=np.uint8)
    s1, s2 = clf(clips), clf(clips)
    assert s1.probs.shape == (2, 400) and np.allclose(s1.probs.sum(1), 1, atol=1e-5)
    assert np.array_equal(s1.topk_ids, s2.topk_ids)
    assert (np.diff(s1.topk_scores, axis=1) <= 0).all()
    assert clf.runtime.startswith("torch-cpu") and clf.weights_id == "random:seed=0"
