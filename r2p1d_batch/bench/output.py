"""Bench results: a list of sections, each a list of flat rows; printed as tables, saved as JSON."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except Exception:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:
        pass
    return info


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v == 0:
            return "0"
        a = abs(v)
        if a >= 100:
            return f"{v:.0f}"
        if a >= 1:
            return f"{v:.2f}"
        if a >= 1e-3:
            return f"{v:.3f}"
        return f"{v:.1e}"
    return str(v)


def format_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A plain-text table of ``rows`` (missing cells print as '-')."""
    if not rows:
        return "(no rows)"
    cols = columns or list(dict.fromkeys(k for r in rows for k in r))
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths]), *map(line, cells)])


def format_report(result: dict[str, Any]) -> str:
    out = [f"machine: {json.dumps(result.get('machine', {}))}"]
    for name, section in result.get("sections", {}).items():
        out += ["", f"== {name} ==", format_table(section.get("rows", []), section.get("columns"))]
        out += [f"  note: {n}" for n in section.get("notes", [])]
    return "\n".join(out)


def write_json(result: dict[str, Any], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.write_text(json.dumps(result, indent=2, default=float) + "\n")
    return path


def ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else a / b


def status_mb(key: str) -> float:
    """VmHWM (peak RSS) or VmRSS of this process from /proc (ru_maxrss carries the parent's
    peak across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")
