"""The installed package: `pip install .` gives the `r2p1d` command, runnable from any directory,
with its default config shipped as package data; `python -m r2p1d_batch` is the same command."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r2p1d_batch.audit.hub import HubError
from r2p1d_batch.cli import COMMANDS, build_parser
from r2p1d_batch.errors import ServiceError, UserError

from tests.helpers import REPO
from tests.helpers.videos import make_video

SUBCOMMANDS = ["label", "query", "maintain", "migrate", "report", "audit", "quantize", "export", "bench", "demo",
               "sample", "fetch-weights"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A real (non-editable) install of the checkout into its own prefix; the lock's packages
    come from this venv, so nothing is resolved or downloaded. --ignore-installed: without it pip
    uninstalls the venv's own (editable) r2p1d-batch first, even with --prefix, and the venv's
    `r2p1d` is gone after the tests."""
    here_before = _pip_show_here()
    prefix = tmp_path_factory.mktemp("prefix")
    build = tmp_path_factory.mktemp("build")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--ignore-installed", "--prefix", str(prefix), "."], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "TMPDIR": str(build)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    site = Path(sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)}))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    env.update(PYTHONPATH=str(site), PYTHONUNBUFFERED="1")
    cwd = tmp_path_factory.mktemp("elsewhere")  # not the checkout: nothing may come from it
    return {"bin": prefix / "bin" / "r2p1d", "site": site, "env": env, "cwd": cwd,
            "here": (here_before, _pip_show_here())}


def _pip_show_here() -> tuple[int, list[str], bool]:
    """This environment's r2p1d-batch as pip sees it: (status, location lines, `r2p1d` script exists)."""
    proc = subprocess.run([sys.executable, "-m", "pip", "show", "r2p1d-batch"], capture_output=True, text=True,
                          timeout=60)
    where = [line for line in proc.stdout.splitlines() if "location" in line.lower()]
    return proc.returncode, where, (Path(sys.executable).parent / "r2p1d").exists()


def test_installing_elsewhere_leaves_this_environment_its_own_r2p1d(installed):
    """The install into a prefix must not touch the environment running the tests: pip would
    uninstall its r2p1d-batch first (and `.venv/bin/r2p1d` with it) without --ignore-installed."""
    before, after = installed["here"]
    assert before[0] == 0, "r2p1d-batch is not installed in the test environment (scripts/install.sh installs it)"
    assert after == before, f"installing into a prefix changed this environment: {before} -> {after}"


def _run(installed, *argv, timeout=120):
    return subprocess.run([str(installed["bin"]), *argv], cwd=installed["cwd"], env=installed["env"],
                          capture_output=True, text=True, timeout=timeout)


def test_every_command_has_help_from_any_directory(installed):
    top = _run(installed, "--help")
    assert top.returncode == 0, top.stderr
    for name in SUBCOMMANDS:
        assert name in top.stdout
        sub = _run(installed, name, "--help")
        assert sub.returncode == 0 and f"usage: r2p1d {name}" in sub.stdout, sub.stderr
    mod = subprocess.run([sys.executable, "-m", "r2p1d_batch", "query", "--help"], cwd=installed["cwd"],
                         env=installed["env"], capture_output=True, text=True, timeout=60)
    assert mod.returncode == 0 and "usage: r2p1d query" in mod.stdout


@pytest.mark.ray
@pytest.mark.slow
def test_the_installed_package_ships_its_configs_and_runs_a_job(installed, tmp_path):
    where = subprocess.run([sys.executable, "-c", "import r2p1d_batch.config as c; print(c.DEFAULT_CONFIG)"],
                           cwd=installed["cwd"], env=installed["env"], capture_output=True, text=True)
    default = Path(where.stdout.strip())
    assert default.is_file() and installed["site"] in default.parents  # package data, not the checkout
    # Config errors are exit 2 with the key named: the shipped defaults were read and validated.
    bad = _run(installed, "label", "m.parquet", "--config", "cpu", "--set", "model.weigths=random")
    assert bad.returncode == 2 and "model.weigths: unknown key" in bad.stderr
    missing = _run(installed, "label", "m.parquet", "--config", "nope")
    assert missing.returncode == 2 and "shipped profiles: cluster, cpu" in missing.stderr
    # A real (tiny) label job through the installed command, its own local Ray, output queried back.
    video = make_video(tmp_path / "v.mp4", n_frames=30, fps=15, size=(160, 120))
    pq.write_table(pa.table({"uri": [str(video), str(tmp_path / "gone.mp4")]}), tmp_path / "m.parquet")
    out = tmp_path / "out"
    job = _run(installed, "label", str(tmp_path / "m.parquet"), "--output", str(out), "--config", "cpu",
               "--set", "model.weights=random", "--set", "ray.num_cpus=2", "--set", "ray.progress_bars=false",
               "--set", "ray.object_store_memory_mb=200", timeout=400)
    assert job.returncode == 0, job.stderr[-3000:]
    assert "RANDOM WEIGHTS" in job.stdout
    q = _run(installed, "query", str(out), "SELECT status, count(*) AS n FROM videos GROUP BY 1 ORDER BY 1",
             "--format", "csv")
    assert q.returncode == 0 and q.stdout.splitlines()[1:] == ['"error",1', '"ok",1'], q.stdout + q.stderr


def test_one_user_error_type_carries_the_exit_code():
    from r2p1d_batch.audit.errors import AuditError
    from r2p1d_batch.classifying.model import WeightsError
    from r2p1d_batch.config import ConfigError
    from r2p1d_batch.planning.manifest import ManifestError
    from r2p1d_batch.query import NoCommittedRuns, ReportError
    from r2p1d_batch.runs.commit import RunInProgressError

    for cls in (AuditError, RunInProgressError, ConfigError, ManifestError, WeightsError, NoCommittedRuns,
                ReportError):
        assert issubclass(cls, UserError) and cls("x").exit_code == 2, cls
    assert issubclass(HubError, ServiceError)
    assert HubError("no token", kind="no_token").exit_code == 2
    assert HubError("job failed", kind="job_failed").exit_code == 3


def test_errors_print_without_a_traceback(tmp_path, capsys):
    from r2p1d_batch.cli import main

    assert main(["query", str(tmp_path)]) == 2  # neither SQL nor --report
    assert main(["query", str(tmp_path), "--report", "labels"]) == 2  # no committed run
    err = capsys.readouterr().err
    assert "give either SQL or --report NAME" in err and "no committed run" in err and "Traceback" not in err


def test_parser_lists_every_command_module():
    names = {a.dest for a in build_parser()._subparsers._group_actions[0]._choices_actions}
    assert len(COMMANDS) == len(SUBCOMMANDS) and names == set(SUBCOMMANDS)
