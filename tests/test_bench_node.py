"""The bench's node section (GPU node only) without a GPU: every row skipped with the reason, the
row schema, the label command lines per decoder, and the nvidia-smi dmon parser."""
from __future__ import annotations

import json
import subprocess
import sys

import jsonschema

from r2p1d_batch import config
from r2p1d_batch.bench.node import (
    DECODERS,
    RESOLUTIONS,
    ROW_KEYS,
    ROW_SCHEMA,
    label_cmd,
    node_row,
    node_rows,
    parse_dmon,
)

from tests.helpers import REPO as ROOT

DMON = """\
# gpu     sm    mem    enc    dec    jpg    ofa
# Idx      %      %      %      %      %      %
    0     12      3      -      0      -      -
    0     85     20      -     64      -      -
    0     91     22      -     71      -      -
    1     99     99      -     99      -      -
"""


def test_parse_dmon():
    assert parse_dmon(DMON) == [(12.0, 0.0), (85.0, 64.0), (91.0, 71.0)]  # GPU 0 only; '-' is 0
    assert parse_dmon("") == [] and parse_dmon("garbage\n1 2 3") == []


def test_rows_skipped_without_a_gpu_say_why():
    rows, notes = node_rows(60, 8, "random")  # this machine: no GPU
    assert [(r["resolution"], r["decoder"]) for r in rows] == [(r, d) for r in RESOLUTIONS for d in DECODERS]
    for r in rows:
        jsonschema.validate(r, ROW_SCHEMA)
        assert "no GPU on this machine" in r["skipped"] and all(r[k] is None for k in ROW_KEYS[2:])
    assert "node section skipped" in notes[0] and "--only node" in notes[0]


def test_measured_row_matches_the_schema():
    record = {"steady_clips_per_sec": 910.5, "clips_per_sec": 702.0, "clips": 944}
    row = node_row("720p", "hybrid", record, (87.5, 61.0), (2.0, 0.04), 16)
    jsonschema.validate(row, ROW_SCHEMA)
    assert {k: row[k] for k in ROW_KEYS} == {
        "resolution": "720p", "decoder": "hybrid", "steady_clips_per_sec": 910.5, "clips_per_sec": 702.0,
        "gpu_busy_pct": 87.5, "nvdec_busy_pct": 61.0, "max_abs_px_vs_cpu": 2.0, "mean_abs_px_vs_cpu": 0.04}
    bad = dict(row, decoder="cuda")
    try:
        jsonschema.validate(bad, ROW_SCHEMA)
        raise AssertionError("schema accepted an unknown decoder")
    except jsonschema.ValidationError:
        pass


def test_label_command_per_decoder(tmp_path):
    for decoder in DECODERS:
        cmd = label_cmd(tmp_path / "m.parquet", tmp_path / "o", decoder, "random")
        assert cmd[1:4] == ["-m", "r2p1d_batch", "label"] and cmd[cmd.index("--config") + 1] == "cluster"
        sets = [cmd[i + 1] for i, x in enumerate(cmd) if x == "--set"]
        cfg = config.load("cluster", sets)  # every command line is a valid config
        assert cfg.model.weights == "random" and "--force" in cmd
        want = {"cpu-exact": ("cpu", "exact", None), "cpu-cv2": ("cpu", "cv2", None),
                "cpu-cluster": ("cpu", "cv2", 720), "nvdec": ("cuda", "exact", None),
                "hybrid": ("cuda", "exact", None)}[decoder]
        assert (cfg.decode.device, cfg.decode.scaler, cfg.decode.skip_loop_filter_min_side) == want
    assert config.load("cluster", list(DECODERS["nvdec"])).decode.nvdec.share == 1.0


def test_bench_cli_node_section_on_a_cpu(tmp_path):
    out = tmp_path / "b.json"
    cmd = [sys.executable, str(ROOT / "jobs" / "bench.py"), "--tiny", "--only", "node", "--inputs",
           str(tmp_path / "in"), "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    node = json.loads(out.read_text())["sections"]["node"]
    assert node["rows"] and all("no GPU on this machine" in x["skipped"] for x in node["rows"])
    assert {x["resolution"] for x in node["rows"]} == {"360p"}
    assert "== node ==" in r.stdout and "node section skipped" in r.stdout
    assert not (tmp_path / "bench-gpu.json").exists()  # no file of skipped rows
