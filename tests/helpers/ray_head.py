"""A real, private Ray head for tests, and `ray job submit` through the CLI.

Not a conftest: the maintainer wires it in. Usage::

    from tests.ray_head import start_ray_head, submit_job

    with start_ray_head(tmp_path, token=secrets.token_hex(16)) as head:
        status, logs = submit_job(head, ["python", "-c", "print(1)"], working_dir=".")

What the head looks like (2 CPU cores are enough):
- `ray start --head` on 127.0.0.1, every fixed port picked free for it, worker
  ports left to the OS, its own short `--temp-dir` (unix sockets under it must
  stay below 107 characters), a small object store, no usage stats.
- Token auth on (`RAY_AUTH_MODE=token`, the token in a 0600 file named by
  `RAY_AUTH_TOKEN_PATH`), or explicitly off when `token=None` (never left to
  Ray's default, which in 2.60 turns auth on whenever ~/.ray/auth_token exists).
- Stopping never uses `ray stop` (that stops every Ray of this user, including
  other people's test runs): it picks the processes whose command line holds
  this head's temp dir or whose environment carries this head's marker, plus
  their descendants, sends SIGTERM, then SIGKILL to whatever is left.

The token is never printed: `RayHead.__repr__` redacts it, and nothing here
logs an environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

# Set in the head's environment; every Ray process (GCS, raylet, dashboard,
# workers, job drivers) inherits it, so it finds them even when their command
# line does not name the temp dir.
MARKER_ENV = "R2P1D_TEST_RAY_HEAD"

# Variables that would make a client (or the head) pick up a token or a cluster
# from the calling environment instead of from the arguments given here.
_AMBIENT_RAY_VARS = (
    "RAY_ADDRESS",
    "RAY_API_SERVER_ADDRESS",
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
)

# `ray job submit` right after `ray start`: the head's job agent may not have
# registered yet, or the dashboard may not listen yet.
_RETRYABLE = (
    "No available agent",
    "Failed to connect to Ray at address",
    "Connection refused",
    "503 Service Unavailable",
)

_TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def ray_cli() -> str:
    """The `ray` executable of the interpreter running the tests."""
    exe = Path(sys.executable).with_name("ray")
    return str(exe) if exe.exists() else (shutil.which("ray") or "ray")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without ambient Ray address/auth variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in _AMBIENT_RAY_VARS}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # Entry points say `python`: make it this interpreter (the venv), not the system one.
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")])
    env.update(extra or {})
    return env


@dataclass
class RayHead:
    """A running head. `address` is the dashboard URL for `ray job submit`."""

    address: str
    gcs_address: str
    temp_dir: Path
    token: str | None
    env: dict[str, str] = field(repr=False)  # what a client needs, token included
    ports: dict[str, int] = field(default_factory=dict)
    start_output: str = field(default="", repr=False)

    def __repr__(self) -> str:  # never show the token
        auth = "token" if self.token else "disabled"
        return f"RayHead(address={self.address!r}, temp_dir={str(self.temp_dir)!r}, auth={auth})"

    def client_env(self, with_token: bool = True) -> dict[str, str]:
        """Environment for a CLI client: with this head's token, or with none at all."""
        if with_token:
            return clean_env(self.env)
        return clean_env({"RAY_AUTH_MODE": "disabled"})

    def processes(self) -> list[psutil.Process]:
        return head_processes(self.temp_dir)


def head_processes(temp_dir: Path | str) -> list[psutil.Process]:
    """Every live process that belongs to the head using `temp_dir`, and their children."""
    marker = str(temp_dir)
    me = os.getpid()
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid == me:
            continue
        try:
            cmd = " ".join(proc.info.get("cmdline") or [])
            if marker in cmd:
                found[proc.pid] = proc
                continue
            if proc.environ().get(MARKER_ENV) == marker:
                found[proc.pid] = proc
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    for proc in list(found.values()):
        try:
            for child in proc.children(recursive=True):
                if child.pid != me:
                    found.setdefault(child.pid, child)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return list(found.values())


def stop_head_processes(temp_dir: Path | str, term_timeout: float = 3.0) -> list[int]:
    """SIGTERM the head's processes, SIGKILL what survives; returns the pids it signalled.
    gcs_server, the raylet and the runtime-env agent often outlive a SIGTERM by 10 s and more on
    a busy machine (a graceful stop is not what the tests check): they get 3 s."""
    signalled: list[int] = []
    # Raylets restart nothing once GCS is gone, but workers may be forked while
    # we stop: sweep a few times until nothing is left.
    for _ in range(3):
        procs = head_processes(temp_dir)
        if not procs:
            break
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                p.send_signal(signal.SIGTERM)
                signalled.append(p.pid)
        _, alive = psutil.wait_procs(procs, timeout=term_timeout)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                p.kill()
        psutil.wait_procs(alive, timeout=5)
    return signalled


@contextlib.contextmanager
def start_ray_head(
    tmp_path: Path,
    token: str | None,
    *,
    num_cpus: int = 2,
    object_store_mb: int = 256,
    extra_env: Mapping[str, str] | None = None,
    start_timeout: float = 180.0,
) -> Iterator[RayHead]:
    """Start a private Ray head with token auth (or none if token is None); stop it on exit.

    `tmp_path` holds the token file and the `ray start` output; Ray's own temp
    dir is a short directory under /tmp (removed on exit) because of the unix
    socket path limit. `extra_env` goes to the head's processes (and so to job
    drivers), e.g. AWS_ENDPOINT_URL for a moto server.
    """
    tmp_path = Path(tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    temp_dir = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))
    names = (
        "gcs", "dashboard", "dashboard_agent_http", "dashboard_agent_grpc",
        "runtime_env_agent", "metrics", "client_server", "node_manager", "object_manager",
    )
    ports = dict(zip(names, _free_ports(len(names))))

    head_env = clean_env(extra_env)
    head_env[MARKER_ENV] = str(temp_dir)
    # Ray resolves 127.0.0.1 to the machine's routable IP unless multi-node
    # mode is off; off, every component binds and advertises loopback only.
    head_env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    client_extra: dict[str, str] = {}
    if token:
        token_file = tmp_path / "ray_auth_token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
        head_env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file))
        client_extra.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    else:
        head_env["RAY_AUTH_MODE"] = "disabled"
        client_extra["RAY_AUTH_MODE"] = "disabled"

    cmd = [
        ray_cli(), "start", "--head",
        "--node-ip-address", "127.0.0.1",
        "--port", str(ports["gcs"]),
        "--dashboard-host", "127.0.0.1",
        "--dashboard-port", str(ports["dashboard"]),
        "--dashboard-agent-listen-port", str(ports["dashboard_agent_http"]),
        "--dashboard-agent-grpc-port", str(ports["dashboard_agent_grpc"]),
        "--runtime-env-agent-port", str(ports["runtime_env_agent"]),
        "--metrics-export-port", str(ports["metrics"]),
        "--ray-client-server-port", str(ports["client_server"]),
        "--node-manager-port", str(ports["node_manager"]),
        "--object-manager-port", str(ports["object_manager"]),
        "--num-cpus", str(num_cpus),
        "--num-gpus", "0",
        "--object-store-memory", str(object_store_mb * 1024 * 1024),
        "--temp-dir", str(temp_dir),
        "--include-dashboard", "true",
        "--disable-usage-stats",
    ]
    address = f"http://127.0.0.1:{ports['dashboard']}"
    head = RayHead(
        address=address,
        gcs_address=f"127.0.0.1:{ports['gcs']}",
        temp_dir=temp_dir,
        token=token,
        env={**client_extra, "RAY_ADDRESS": address},
        ports=ports,
    )
    try:
        proc = subprocess.run(
            cmd, env=head_env, cwd=tmp_path, capture_output=True, text=True,
            timeout=start_timeout,
        )
        head.start_output = proc.stdout + proc.stderr
        (tmp_path / "ray_start.log").write_text(head.start_output)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start failed (rc={proc.returncode}):\n{head.start_output[-4000:]}")
        _wait_for_dashboard(head, timeout=start_timeout)
        yield head
    finally:
        stop_head_processes(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_dashboard(head: RayHead, timeout: float) -> None:
    """Wait until the dashboard answers on its public health path (no token needed)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(head.address + "/api/gcs_healthz", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError) as e:
            last = str(e)
        time.sleep(0.5)
    raise TimeoutError(f"Ray dashboard at {head.address} did not come up in {timeout}s: {last}")


class SubmitError(RuntimeError):
    """`ray job submit` was refused or could not reach the head; `.output` has what it said."""

    def __init__(self, message: str, returncode: int, output: str):
        super().__init__(f"{message} (rc={returncode}):\n{output[-6000:]}")
        self.returncode = returncode
        self.output = output


def _run_cli(args: list[str], env: Mapping[str, str], cwd: str | Path | None, timeout: float):
    return subprocess.run(
        args, env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def submit_job(
    head: RayHead,
    entrypoint: str | Sequence[str],
    working_dir: str | Path | None = None,
    runtime_env: Mapping | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 600.0,
    *,
    with_token: bool = True,
    submission_id: str | None = None,
    retry_for: float = 90.0,
) -> tuple[str, str]:
    """Submit through the `ray job submit` CLI, wait, return (status, logs).

    `entrypoint` is an argv list or a shell-like string (split with shlex; the
    CLI re-joins the words for the head's shell). `env` replaces the client's
    environment entirely when given (e.g. to submit without a token); by
    default the client gets `head.client_env(with_token)`. Retries while the
    head says "No available agent" (right after start) for `retry_for` seconds.
    Raises SubmitError when the submission is refused (bad/missing token, bad
    runtime_env) and TimeoutError (after `ray job stop`) past `timeout`.
    Status is Ray's: SUCCEEDED, FAILED or STOPPED.
    """
    argv = shlex.split(entrypoint) if isinstance(entrypoint, str) else list(entrypoint)
    client_env = dict(env) if env is not None else head.client_env(with_token)
    sid = submission_id or f"test-{uuid.uuid4().hex[:12]}"
    cli = ray_cli()
    submit = [cli, "job", "submit", "--address", head.address, "--submission-id", sid]
    if working_dir is not None:
        submit += ["--working-dir", str(Path(working_dir).resolve())]
    if runtime_env:
        submit += ["--runtime-env-json", json.dumps(dict(runtime_env))]
    submit += ["--", *argv]

    deadline = time.monotonic() + timeout
    retry_until = time.monotonic() + retry_for
    while True:
        try:
            proc = _run_cli(submit, client_env, None, max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired as e:
            _stop(head, sid, client_env)
            out = _text(e.stdout) + _text(e.stderr)
            logs = _logs(head, sid, client_env)
            raise TimeoutError(f"job {sid} did not finish in {timeout}s; logs:\n{logs or out}") from None
        out = proc.stdout + proc.stderr
        status = _status(head, sid, client_env)
        if status is not None:
            break  # accepted; the CLI's rc only says succeeded (0) or not (1)
        if any(s in out for s in _RETRYABLE) and time.monotonic() < retry_until:
            time.sleep(2.0)
            continue
        raise SubmitError("ray job submit was refused", proc.returncode, out)

    # The waiting submit returns when the job is terminal; poll briefly in case
    # the status write lags the log stream.
    while status not in _TERMINAL and time.monotonic() < deadline:
        time.sleep(1.0)
        status = _status(head, sid, client_env)
    if status not in _TERMINAL:
        _stop(head, sid, client_env)
        raise TimeoutError(f"job {sid} still {status} after {timeout}s")
    return status, _logs(head, sid, client_env) or out


def _text(b) -> str:
    if b is None:
        return ""
    return b.decode(errors="replace") if isinstance(b, bytes) else b


def _rest(head: RayHead, env: Mapping[str, str], method: str, path: str, timeout: float = 30):
    """Call the job REST API with the client's token (if its env has one).

    Status, logs and stop go through REST rather than the CLI: one HTTP call
    instead of a Python start-up each poll, and JSON instead of log lines.
    Returns (http_status, parsed_json_or_None).
    """
    import urllib.error
    import urllib.request

    req = urllib.request.Request(head.address + path, method=method)
    token = env.get("RAY_AUTH_TOKEN")
    if token and env.get("RAY_AUTH_MODE") == "token":
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
            return r.status, (json.loads(body) if body else None)
    except urllib.error.HTTPError as e:
        return e.code, None
    except (urllib.error.URLError, OSError):
        return 0, None


def _status(head: RayHead, sid: str, env: Mapping[str, str]) -> str | None:
    """Ray's status string for the submission, None if the head does not know it
    (or refuses to say, e.g. without a token)."""
    code, info = _rest(head, env, "GET", f"/api/jobs/{sid}")
    if code != 200 or not info:
        return None
    return str(info.get("status"))


def _logs(head: RayHead, sid: str, env: Mapping[str, str]) -> str:
    code, info = _rest(head, env, "GET", f"/api/jobs/{sid}/logs", timeout=60)
    return str(info.get("logs", "")) if code == 200 and info else ""


def _stop(head: RayHead, sid: str, env: Mapping[str, str]) -> None:
    _rest(head, env, "POST", f"/api/jobs/{sid}/stop")
