"""Peak memory of the labeling job (jobs/label.py in a subprocess, starting its own local Ray)
on a short and a long video: streaming means the peak must not grow with the video's length."""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from .e2e import write_manifest

ROOT = Path(__file__).resolve().parents[2]


def label_cmd(manifest: Path, out: Path, overrides: list[str]) -> list[str]:
    cmd = [sys.executable, str(ROOT / "jobs" / "label.py"), str(manifest), "--output", str(out),
           "--log-level", "WARNING"]
    for o in ["ray.progress_bars=false", *overrides]:
        cmd += ["--set", o]
    return cmd


ROLES = {"DecodeStage": "decode", "ClassifierActor": "classifier"}  # Ray worker titles while busy


def peak_rss(cmd: list[str], interval: float = 0.2) -> tuple[int, dict[str, int], float, int]:
    """Run ``cmd``; sample the RSS of it and all its descendants (Ray's raylet and workers are
    children of a local driver). Returns (peak of the sum, peak per role: driver, decode,
    classifier, other; wall, exit code). A worker's role is the stage its title ever named.
    Shared pages (the object store) count once per process that maps them."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = psutil.Process(proc.pid)
    peak_sum, peak_pid, role = 0, {}, {proc.pid: "driver"}
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        total = 0
        for p in procs:
            try:
                rss, title = p.memory_info().rss, " ".join(p.cmdline())
            except psutil.Error:
                continue
            total += rss
            peak_pid[p.pid] = max(peak_pid.get(p.pid, 0), rss)
            for key, name in ROLES.items():
                if key in title and p.pid != proc.pid:
                    role[p.pid] = name
        peak_sum = max(peak_sum, total)
        time.sleep(interval)
    _, err = proc.communicate()
    if proc.returncode:
        sys.stderr.write(err.decode(errors="replace")[-2000:])
    by_role: dict[str, int] = {}
    for pid, rss in peak_pid.items():
        r = role.get(pid, "other")
        by_role[r] = max(by_role.get(r, 0), rss)
    return peak_sum, by_role, time.perf_counter() - t, proc.returncode


def memory_rows(videos: dict[str, Path], overrides: list[str]) -> tuple[list[dict], list[str]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="r2p1d-bench-mem-") as tmp:
        for name, path in videos.items():
            manifest = write_manifest([path], Path(tmp) / f"{name}.parquet")
            s, by_role, wall, rc = peak_rss(label_cmd(manifest, Path(tmp) / f"out-{name}", overrides))
            rows.append({"video": name, "peak_rss_sum_mb": s / 2**20,
                         **{f"peak_{r}_mb": by_role.get(r, 0) / 2**20 for r in ("driver", "decode", "classifier")},
                         "wall_s": wall, "exit": rc})
    base = rows[0]
    for r in rows:
        r["vs_first"] = r["peak_rss_sum_mb"] / base["peak_rss_sum_mb"] if base["peak_rss_sum_mb"] else None
        r["decode_vs_first"] = r["peak_decode_mb"] / base["peak_decode_mb"] if base["peak_decode_mb"] else None
    return rows, [f"job overrides: {' '.join(overrides)}; RSS summed over the job's process tree (driver, raylet, "
                  "workers); peak_*_mb: the largest process of each role (decode task, classifier actor, driver)"]
