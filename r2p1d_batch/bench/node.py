"""Node section: the whole labeling job (jobs/label.py) on one GPU node per decoder setting, at
360p / 720p / 1080p (60-s 30-fps H.264, dense sampling): steady clips/s, GPU and NVDEC busy, and
the GPU path's pixels vs the CPU exact path. Writes ``bench-gpu.json`` with a ``node`` list.

Without a GPU (or without NVDEC) every row is written as skipped, with the reason: the plumbing
(row schema, label command lines, the nvidia-smi dmon parser) is tested on CPUs, the figures
come from a GPU session. NOT YET RUN ON A GPU.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from ..runs import commit
from . import inputs

RESOLUTIONS = ("360p", "720p", "1080p")
# decoder setting -> --set overrides of jobs/label.py (on top of --config cluster)
# The exact rows undo cluster.yaml's lossy CPU decode (cv2, no deblocking from 720 px): the NVDEC
# lane gives the exact path's pixels, and a run must not mix the two paths.
EXACT = ["decode.scaler=exact", "decode.skip_loop_filter_min_side=null"]
DECODERS: dict[str, list[str]] = {
    "cpu-exact": ["decode.device=cpu", *EXACT],
    "cpu-cv2": ["decode.device=cpu", "decode.scaler=cv2", "decode.skip_loop_filter_min_side=null"],
    "cpu-cluster": ["decode.device=cpu"],  # configs/cluster.yaml's decode as shipped
    "nvdec": ["decode.device=cuda", "decode.nvdec.share=1.0", *EXACT],
    "hybrid": ["decode.device=cuda", *EXACT],  # decode.nvdec.share from the config: the knob to tune here
}
ROW_KEYS = ("resolution", "decoder", "steady_clips_per_sec", "clips_per_sec", "gpu_busy_pct", "nvdec_busy_pct",
            "max_abs_px_vs_cpu", "mean_abs_px_vs_cpu")
ROW_SCHEMA = {  # JSON schema of one row (docs/bench-gpu.json "node")
    "type": "object",
    "required": list(ROW_KEYS),
    "properties": {
        "resolution": {"enum": list(RESOLUTIONS)},
        "decoder": {"enum": list(DECODERS)},
        **{k: {"type": ["number", "null"], "minimum": 0} for k in ROW_KEYS[2:]},
        "skipped": {"type": "string"},
        "videos": {"type": "integer"},
        "clips": {"type": ["integer", "null"]},
    },
}


def gpu_here() -> tuple[bool, str]:
    """(can the node section run here, why not)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return False, "no GPU on this machine (torch.cuda.is_available() is False)"
    except Exception as e:
        return False, f"torch unusable ({e})"
    return True, ""


def skipped_rows(resolutions, why: str) -> list[dict]:
    return [{**{k: None for k in ROW_KEYS}, "resolution": r, "decoder": d, "skipped": why}
            for r in resolutions for d in DECODERS]


def label_cmd(manifest: Path, out: Path, decoder: str, weights: str) -> list[str]:
    return [sys.executable, "-m", "r2p1d_batch", "label", str(manifest), "--output", str(out),
            "--config", "cluster", "--force", "--set", f"model.weights={weights}", "--set", "storage.region=null",
            "--set", "ray.progress_bars=false", *[x for o in DECODERS[decoder] for x in ("--set", o)]]


def parse_dmon(text: str) -> list[tuple[float, float]]:
    """``nvidia-smi dmon -s u`` lines -> (sm %, dec %) samples (GPU 0; '-' counts as 0)."""
    header, out = None, []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "#":
            if header is None and "sm" in parts:
                header = parts[1:]
            continue
        if header is None or len(parts) != len(header) or parts[0] != "0":
            continue
        vals = dict(zip(header, parts))
        num = lambda v: float(v) if v.replace(".", "", 1).isdigit() else 0.0  # noqa: E731
        out.append((num(vals.get("sm", "0")), num(vals.get("dec", "0"))))
    return out


class BusySampler:
    """GPU and NVDEC utilisation over a block, from ``nvidia-smi dmon -s u -d 1``."""

    def __init__(self):
        self.text, self._proc, self._thread = "", None, None

    def __enter__(self) -> BusySampler:
        try:
            self._proc = subprocess.Popen(["nvidia-smi", "dmon", "-s", "u", "-d", "1"], stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, text=True)
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        except OSError:
            self._proc = None
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            self.text += line

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._thread.join(timeout=5)

    def means(self) -> tuple[Optional[float], Optional[float]]:
        s = parse_dmon(self.text)[2:]  # the first seconds are Ray's start-up
        if not s:
            return None, None
        return sum(x for x, _ in s) / len(s), sum(y for _, y in s) / len(s)


def pixel_diff(video: Path, clips: int = 8) -> tuple[Optional[float], Optional[float]]:
    """max and mean |GPU path - CPU exact path| over the first ``clips`` clips of ``video``."""
    import numpy as np

    from .. import config
    from ..decoding import colour
    from ..decoding.choice import StreamFacts
    from ..decoding.nvdec import NvdecDecoder
    from ..decoding.pyav import VideoSource
    from ..decoding.sampling import plan_clips

    cfg = config.load(None, [])
    with VideoSource(str(video), str(video), cfg.decode) as v:
        windows = plan_clips(cfg.sampling, v.info.duration, v.info.fps)[:clips]
        cpu = [c.frames for c in v.clips(windows)]
    with VideoSource(str(video), str(video), cfg.decode) as v:
        f = StreamFacts.of(v.stream)
        gpu = [c.frames for c in NvdecDecoder().clips(str(video), v, windows, colour.matrix_of(f.colorspace),
                                                       f.full_range)]
    d = np.abs(np.stack(gpu).astype(np.int16) - np.stack(cpu))
    return float(d.max()), float(d.mean())


def node_row(resolution: str, decoder: str, record: dict, busy: tuple, px: tuple, videos: int) -> dict:
    return {"resolution": resolution, "decoder": decoder,
            "steady_clips_per_sec": record.get("steady_clips_per_sec"), "clips_per_sec": record.get("clips_per_sec"),
            "gpu_busy_pct": busy[0], "nvdec_busy_pct": busy[1], "max_abs_px_vs_cpu": px[0],
            "mean_abs_px_vs_cpu": px[1], "videos": videos, "clips": record.get("clips")}


def _manifest(video: Path, copies: int, directory: Path) -> Path:
    links = []
    for i in range(copies):
        link = directory / f"v{i:03d}{video.suffix}"
        if not link.exists():
            os.symlink(video, link)
        links.append(str(link))
    path = directory / "manifest.parquet"
    pq.write_table(pa.table({"video_id": [f"v{i:03d}" for i in range(copies)], "uri": links}), path)
    return path


def node_rows(seconds: int, copies: int, weights: str, inputs_dir=None, resolutions=RESOLUTIONS,
              available=gpu_here) -> tuple[list[dict], list[str]]:
    ok, why = available()
    if not ok:
        return skipped_rows(resolutions, why), [f"node section skipped: {why}. It runs jobs/label.py on a GPU node "
                                                "for every decoder setting; run `r2p1d bench --only node` there."]
    rows, notes = [], []
    for res in resolutions:
        video = inputs.video(res, seconds, inputs_dir)
        try:
            px = pixel_diff(video)
        except Exception as e:  # NVDEC unusable on this node: the nvdec/hybrid rows will say so too
            px = (None, None)
            notes.append(f"{res}: GPU path pixels not compared ({type(e).__name__}: {e})")
        with tempfile.TemporaryDirectory(prefix=f"node-{res}-") as tmp:
            manifest = _manifest(video, copies, Path(tmp))
            for decoder in DECODERS:
                out = Path(tmp) / f"out-{decoder}"
                with BusySampler() as busy:
                    t = time.perf_counter()
                    proc = subprocess.run(label_cmd(manifest, out, decoder, weights), capture_output=True, text=True)
                if proc.returncode != 0:
                    rows.append({**skipped_rows([res], "")[0], "decoder": decoder,
                                 "skipped": f"jobs/label.py exit {proc.returncode}: {proc.stderr.strip()[-300:]}"})
                    continue
                record = commit.committed_runs(str(out))[-1]
                # the GPU path's pixels for the NVDEC settings; cpu-exact is the reference itself
                gpu_px = {"nvdec": px, "hybrid": px, "cpu-exact": (0.0, 0.0)}.get(decoder, (None, None))
                rows.append(node_row(res, decoder, record, busy.means(), gpu_px, copies))
                notes.append(f"{res} {decoder}: {time.perf_counter() - t:.0f} s; videos by decoder "
                             f"{record.get('videos_by_decoder')}")
    return rows, notes


def write_node_json(rows: list[dict], notes: list[str], machine: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps({"machine": machine, "node": rows, "notes": notes}, indent=2, default=float) + "\n")
    return path
