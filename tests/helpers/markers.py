"""Keeps the ``ray`` and ``slow`` markers honest, so ``pytest -m "not ray and not slow"`` is a
real fast subset (a plugin, through conftest.py's ``pytest_plugins``).

- Every Ray started while the tests run, in this process or in a subprocess that inherits its
  environment (jobs/label.py, ``r2p1d label``, ray.cluster_utils), puts its session directory
  under one ``RAY_TMPDIR`` made for this pytest process (short, under /tmp: Ray's unix sockets
  live there). A test not marked ``ray`` fails when a new session directory appeared while it set
  up and ran, when Ray was initialised in this process during it, or when it asks for the
  session's Ray (``ray_local``). A subprocess given a scrubbed environment escapes the first
  check: those tests are marked by hand. A test that uses a Ray an earlier test left running is
  only caught where no earlier test started one, which is what the fast subset is: run it.
- The terminal summary lists tests that took over ``SLOW_SEC`` (setup, call and teardown) without
  the ``slow`` marker. A list, not a failure: timings on a shared 2-core machine are noisy.
The directory is removed at the end when every test passed, and named in the summary otherwise
(the Ray logs of a failed run are in it).
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

SLOW_SEC = 10.0

_BEFORE = pytest.StashKey[tuple]()
_state: dict = {"tmpdir": None, "old": None, "failed": True, "durations": {}, "slow_unmarked": {}}


def pytest_configure(config):
    _state["old"] = os.environ.get("RAY_TMPDIR")
    worker = getattr(config, "workerinput", {}).get("workerid")
    if worker and _state["old"]:  # an xdist worker: its own directory inside the controller's
        _state["tmpdir"] = tempfile.mkdtemp(prefix=worker, dir=_state["old"])
    else:
        _state["tmpdir"] = tempfile.mkdtemp(prefix="r2t", dir="/tmp")
    os.environ["RAY_TMPDIR"] = _state["tmpdir"]


# The xdist group of the tests that use a worker's in-process Ray (below).
SESSION_RAY = "session_ray"


def _uses_session_ray(item) -> bool:
    return "ray_local" in getattr(item, "fixturenames", ())


def pytest_itemcollected(item):
    """Under ``pytest -n 2 --dist loadgroup`` (scripts/test.sh) the tests that use the session's
    Ray (``ray_local``; the multi-node cluster takes its place) are one xdist group: one worker
    runs them in file order on its one local Ray, which they share (and some depend on the
    order: test_audit's replays read what its end-to-end test wrote). Everything else, tests that
    start a Ray of their own in a subprocess included, goes to whichever worker is free, so at
    most two Ray runs share the 2 cores at a time."""
    if _uses_session_ray(item) and item.config.pluginmanager.hasplugin("xdist"):
        item.add_marker(pytest.mark.xdist_group(SESSION_RAY))


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config, items):
    """xdist groups a test by an ``@group`` suffix that its worker appends to the node id; on
    pytest 9.2 the suffix it writes (to ``item._nodeid``) no longer reaches the id
    (pytest-dev/pytest-xdist#1386), so the group is lost and the tests spread over both workers.
    Append it where pytest keeps the id now, unless xdist did."""
    result = yield
    if getattr(config.option, "loadgroup", False):
        for item in items:
            if _uses_session_ray(item) and not item.nodeid.endswith("@" + SESSION_RAY):
                nodeid = f"{item.nodeid}@{SESSION_RAY}"
                if hasattr(item, "_id"):  # pytest >= 9.2: a structured id
                    item._id = type(item._id).parse(nodeid)
                else:
                    item._nodeid = nodeid
    return result


def _sessions() -> set[str]:
    root = Path(_state["tmpdir"], "ray")
    return {p.name for p in root.glob("session_2*")} if root.is_dir() else set()


def _ray_initialized() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and getattr(ray, "is_initialized", lambda: False)())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item):
    item.stash[_BEFORE] = (_sessions(), _ray_initialized())
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield
    if item.get_closest_marker("ray") is None:
        sessions, was_up = item.stash.get(_BEFORE, (set(), True))
        why = []
        if "ray_local" in item.fixturenames:
            why.append("it uses the session's Ray (ray_local)")
        if not was_up and _ray_initialized():
            why.append("Ray was initialised in this process during it")
        new = _sessions() - sessions
        if new:
            why.append(f"{len(new)} Ray session(s) started during it (under RAY_TMPDIR={_state['tmpdir']})")
        if why:
            pytest.fail(f"{item.nodeid} is not marked `ray`, but " + "; ".join(why)
                        + ". Mark it @pytest.mark.ray (and @pytest.mark.slow if it takes over ~10 s).", pytrace=False)
    return result


def pytest_runtest_logreport(report):
    d = _state["durations"]
    d[report.nodeid] = d.get(report.nodeid, 0.0) + report.duration
    if report.when == "teardown" and d[report.nodeid] > SLOW_SEC and "slow" not in report.keywords:
        _state["slow_unmarked"][report.nodeid] = d[report.nodeid]


def pytest_terminal_summary(terminalreporter, exitstatus):
    slow = _state["slow_unmarked"]
    if slow:
        terminalreporter.section(f"over {SLOW_SEC:g} s without the slow marker")
        for nodeid, sec in sorted(slow.items(), key=lambda kv: -kv[1]):
            terminalreporter.write_line(f"{sec:6.1f}s {nodeid}")
    if exitstatus != 0 and _state["tmpdir"] and Path(_state["tmpdir"]).exists():
        terminalreporter.write_line(f"Ray session logs of this run: {_state['tmpdir']}/ray")


def pytest_sessionfinish(session, exitstatus):
    _state["failed"] = exitstatus != 0


def pytest_unconfigure(config):
    if _state["old"] is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = _state["old"]
    if _state["tmpdir"] and not _state["failed"]:
        shutil.rmtree(_state["tmpdir"], ignore_errors=True)
