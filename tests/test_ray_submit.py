"""`ray job submit` against a real local head with Ray token auth (issue 7).

One head with a token serves the module (starting one costs ~10 s on 2 cores);
a second, token-less head checks that stopping it leaves none of its processes.
"""

from __future__ import annotations

import secrets
import textwrap
import urllib.error
import urllib.request

import pytest

from tests.helpers.ray_head import SubmitError, head_processes, start_ray_head, submit_job

pytestmark = [pytest.mark.ray, pytest.mark.slow]  # every test needs a `ray start` head (~10 s)

JOB_SCRIPT = """\
import os
import ray

ray.init()

@ray.remote
def add(a, b):
    return a + b

print("greeting", os.environ.get("GREETING"))
print("sum", ray.get(add.remote(1, 1)))
"""

FAILING_SCRIPT = """\
print("about to fail: marker-7d1e")
raise SystemExit("job failed on purpose: marker-7d1e")
"""


@pytest.fixture(scope="module")
def token() -> str:
    return secrets.token_hex(24)


@pytest.fixture(scope="module")
def head(tmp_path_factory, token):
    with start_ray_head(tmp_path_factory.mktemp("head"), token=token) as h:
        yield h


@pytest.fixture()
def job_dir(tmp_path):
    (tmp_path / "hello_job.py").write_text(JOB_SCRIPT)
    (tmp_path / "failing_job.py").write_text(FAILING_SCRIPT)
    return tmp_path


def test_rest_api_refuses_requests_without_token(head):
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(head.address + "/api/jobs/", timeout=30)
    assert err.value.code == 401


def test_submit_without_token_is_refused(head, job_dir):
    with pytest.raises(SubmitError) as err:
        submit_job(head, ["python", "hello_job.py"], working_dir=job_dir,
                   with_token=False, retry_for=60)
    assert "Authentication required" in err.value.output
    assert "Missing authentication token" in err.value.output


def test_submit_with_wrong_token_is_refused(head, job_dir, token):
    env = head.client_env()
    env["RAY_AUTH_TOKEN"] = secrets.token_hex(24)
    with pytest.raises(SubmitError) as err:
        submit_job(head, ["python", "hello_job.py"], working_dir=job_dir, env=env, retry_for=60)
    assert "Authentication failed" in err.value.output
    assert token not in err.value.output


def test_submit_with_token_succeeds_and_returns_logs(head, job_dir, token):
    status, logs = submit_job(
        head,
        ["python", "hello_job.py"],
        working_dir=job_dir,
        runtime_env={"env_vars": {"GREETING": "hello-from-runtime-env"}},
        timeout=300,
    )
    assert status == "SUCCEEDED", logs
    assert "sum 2" in logs
    assert "greeting hello-from-runtime-env" in logs  # runtime_env reached the driver
    assert token not in logs


def test_failing_job_surfaces_its_logs(head, job_dir, token):
    status, logs = submit_job(head, "python failing_job.py", working_dir=job_dir, timeout=300)
    assert status == "FAILED"
    assert "about to fail: marker-7d1e" in logs
    assert "job failed on purpose: marker-7d1e" in logs
    assert token not in logs


def test_head_without_auth_runs_jobs_and_stops_all_its_processes(tmp_path):
    (tmp_path / "job.py").write_text(textwrap.dedent(JOB_SCRIPT))
    with start_ray_head(tmp_path / "h", token=None) as h:
        status, logs = submit_job(h, ["python", "job.py"], working_dir=tmp_path, timeout=300)
        assert status == "SUCCEEDED", logs
        assert head_processes(h.temp_dir), "the head's processes should be found while it runs"
        temp_dir = h.temp_dir
    assert head_processes(temp_dir) == []
    assert not temp_dir.exists()


def test_label_job_through_ray_job_submit(head, tmp_path):
    """The README's command: `ray job submit --working-dir . -- python jobs/label.py M --output O`."""
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    from r2p1d_batch.synth import make_video

    from tests.conftest import REPO

    videos = [make_video(tmp_path / f"v{i}.mp4", n_frames=20, fps=15, pattern="moving", seed=i) for i in range(2)]
    manifest = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({"uri": [str(v) for v in videos] + [str(tmp_path / "gone.mp4")]}), manifest)
    out = tmp_path / "out"
    status, logs = submit_job(
        head,
        ["python", "jobs/label.py", str(manifest), "--output", str(out),
         "--set", "model.weights=random", "--set", "ray.progress_bars=false"],
        working_dir=REPO,
        timeout=600,
    )
    assert status == "SUCCEEDED", logs[-4000:]
    assert "videos 3 (ok 2, error 1)" in logs and head.token not in logs
    con = duckdb.connect()
    (n_clips,) = con.execute(f"SELECT count(*) FROM read_parquet('{out}/clips/*.parquet')").fetchone()
    rows = con.execute(f"SELECT status, count(*) FROM read_parquet('{out}/videos/*.parquet') "
                       "GROUP BY 1 ORDER BY 1").fetchall()
    assert n_clips == 2 and rows == [("error", 1), ("ok", 2)]
