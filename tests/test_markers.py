"""The marker check (tests/helpers/markers.py) on a small test file run by a pytest subprocess.
No Ray starts here: a "Ray session" is a directory made where Ray would make one, and an
initialised Ray is a stand-in module."""
import re
import shutil

from tests.helpers import REPO

INNER = '''
import os
import pathlib
import sys
import types

import pytest


def _new_session(n):  # what a Ray started by a subprocess leaves under RAY_TMPDIR
    pathlib.Path(os.environ["RAY_TMPDIR"], "ray", f"session_2099-01-01_00-00-00_00000{n}_1").mkdir(parents=True)


@pytest.fixture
def ray_local():
    return None


def test_plain():
    assert os.environ["RAY_TMPDIR"].startswith("/tmp/")


def test_asks_for_the_session_ray(ray_local):
    pass


def test_a_subprocess_starts_a_ray():
    _new_session(1)


@pytest.mark.ray
def test_marked(ray_local):
    _new_session(2)


def test_zz_ray_initialised_in_process():
    sys.modules["ray"] = types.SimpleNamespace(is_initialized=lambda: True)
'''


def test_unmarked_tests_that_use_ray_fail(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makepyfile(test_inner=INNER)
    pytester.makeini("[pytest]\nmarkers =\n    ray: uses Ray\n")
    res = pytester.runpytest_subprocess("-p", "tests.helpers.markers", "-p", "no:cacheprovider")
    kept = re.search(r"Ray session logs of this run: (/tmp/r2t\w+)/ray", res.stdout.str())
    assert kept, res.stdout.str()  # a failed run keeps its Ray logs, and says where
    shutil.rmtree(kept.group(1))
    res.assert_outcomes(passed=2, failed=3)
    res.stdout.fnmatch_lines_random([
        "*test_asks_for_the_session_ray is not marked `ray`, but it uses the session's Ray (ray_local)*",
        "*test_a_subprocess_starts_a_ray is not marked `ray`, but 1 Ray session(s) started during it*",
        "*test_zz_ray_initialised_in_process is not marked `ray`, but Ray was initialised in this process*",
    ])


GROUPED = '''
import os

import pytest


@pytest.fixture(scope="session")
def ray_local():
    return os.environ["PYTEST_XDIST_WORKER"]


@pytest.fixture
def uses_it(ray_local):
    return ray_local


@pytest.mark.ray
@pytest.mark.parametrize("i", range(6))
def test_session_ray(ray_local, i):
    pass


@pytest.mark.ray
def test_session_ray_through_a_fixture(uses_it):
    pass


@pytest.mark.parametrize("i", range(6))
def test_plain(i):
    pass
'''


def test_session_ray_tests_share_one_xdist_worker(pytester, monkeypatch):
    """scripts/test.sh's `-n 2 --dist loadgroup`: every test that uses the session's Ray, directly
    or through another fixture, runs on one worker (the group survives pytest 9.2's node ids);
    the others may run on either."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makepyfile(test_grouped=GROUPED)
    pytester.makeini("[pytest]\nmarkers =\n    ray: uses Ray\n")
    res = pytester.runpytest_subprocess("-p", "tests.helpers.markers", "-p", "no:cacheprovider",
                                        "-n", "2", "--dist", "loadgroup", "-v")
    res.assert_outcomes(passed=13)
    ran = re.findall(r"\[(gw\d)\] .*PASSED (\S+)", res.stdout.str())
    grouped = {worker for worker, test in ran if "test_session_ray" in test}
    assert len(grouped) == 1, ran
    assert all(test.endswith("@session_ray") == ("test_session_ray" in test) for _, test in ran), ran
