"""Shared fixtures: synthetic videos and one local Ray for in-process pipeline tests."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `from synth import ...`
REPO = Path(__file__).resolve().parent.parent


def init_local_ray():
    """The session's small local Ray (2 CPUs, small object store), started if not running."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",  # our own, even when a `ray start` cluster runs on this machine
            num_cpus=2,
            object_store_memory=300 * 2**20,
            include_dashboard=False,
            runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
            log_to_driver=False,
        )
    return ray


@pytest.fixture(scope="session")
def ray_local():
    """One small local Ray for the whole session. A module that needs another Ray (the
    multi-node tests) shuts it down and calls init_local_ray() again when it is done."""
    ray = init_local_ray()
    yield ray
    ray.shutdown()


@pytest.fixture
def job_env():
    """Environment for running jobs/*.py as subprocesses against their own local Ray."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    """A fresh ONNX export cache for one test module (R2P1D_ONNX_CACHE), so exports are tested."""
    mp = pytest.MonkeyPatch()
    mp.setenv("R2P1D_ONNX_CACHE", str(tmp_path_factory.mktemp("onnx")))
    yield
    mp.undo()
