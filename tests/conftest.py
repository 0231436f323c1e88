"""Shared fixtures: one local Ray for in-process pipeline tests, job environments, the ONNX cache.
Helpers live in tests/helpers/ (no test imports another test file)."""
from __future__ import annotations

import os

import pytest

from tests.helpers import REPO
from tests.helpers.local_ray import init_local_ray

# Fixtures defined with the helpers they belong to (moto's S3 server and its fault proxy), the
# check that keeps the ray/slow markers honest, and pytester (tests/test_markers.py runs that check).
pytest_plugins = ["tests.helpers.s3", "tests.helpers.markers", "pytester"]


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


@pytest.fixture(scope="session")
def _onnx_cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def onnx_cache(_onnx_cache_dir):
    """An ONNX export cache made fresh for this session (R2P1D_ONNX_CACHE) while a module runs, so
    the graphs are exported by this code, not found from an earlier run; the modules that use it
    share it, so each (weights, graph) is exported once per session (~5 s each)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("R2P1D_ONNX_CACHE", str(_onnx_cache_dir))
    yield
    mp.undo()
