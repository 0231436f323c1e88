"""The audit on clips labeled from NVDEC output, on a machine without NVDEC: a real labeled output
(the pipeline on the session's local Ray) whose committed videos rows are rewritten to say
decoder=nvdec, and for one video clip_sha values that the CPU path does not reproduce (as NVDEC's
rounding would give). The audit must verify those clips by the stated pixel tolerance instead of
clip_sha, say so, and still catch a changed source."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers.outputs import label_run
from tests.helpers.videos import make_yuv_video

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def labeled(ray_local, tmp_path_factory):
    """2 lossy H.264 videos (streams NVDEC takes) x 2 clips, labeled on the CPU (the session's Ray)."""
    root = tmp_path_factory.mktemp("nvlabeled")
    videos = root / "videos"
    videos.mkdir()
    a = make_yuv_video(videos / "a.mp4", 96, 64, pattern="gradient", n=66, lossless=False)
    b = make_yuv_video(videos / "b.mp4", 80, 48, pattern="noise", n=66, lossless=False, colorspace=1, color_range=1)
    manifest = root / "manifest.parquet"
    pq.write_table(pa.table({"video_id": ["a", "b"], "uri": [str(a), str(b)]}), manifest)
    out = root / "out"
    label_run(manifest, out)
    return {"out": out, "videos": videos, "cache": root / "cache"}


def _as_nvdec(labeled, dest: Path, fake_sha_for: str) -> Path:
    """A copy of the output whose videos say decoder=nvdec, and whose clips of ``fake_sha_for``
    carry a clip_sha the CPU path will not re-create."""
    out = dest / "out"
    shutil.copytree(labeled["out"], out, ignore=shutil.ignore_patterns("audits"))
    for part in out.glob("videos/part-*.parquet"):
        t = pq.read_table(part)
        t = t.set_column(t.schema.get_field_index("decoder"), "decoder", pa.array(["nvdec"] * t.num_rows, pa.string()))
        pq.write_table(t, part)
    for part in out.glob("clips/part-*.parquet"):
        t = pq.read_table(part)
        sha = [("f" * 64 if v == fake_sha_for else s) for v, s in zip(t.column("video_id").to_pylist(),
                                                                      t.column("clip_sha").to_pylist())]
        t = t.set_column(t.schema.get_field_index("clip_sha"), "clip_sha", pa.array(sha, pa.string()))
        pq.write_table(t, part)
    return out


def _audit(out: Path, labeled, capsys, *extra) -> tuple[int, str, Path]:
    from r2p1d_batch.cli import main

    rc = main(["audit", str(out), "--sample", "4", "--set", f"audit.cache_dir={labeled['cache']}",
               "--log-level", "WARNING", *extra])
    stdout = capsys.readouterr().out
    line = [ln for ln in stdout.splitlines() if ln.startswith("report: ")][-1]
    return rc, stdout, Path(line.removeprefix("report: "))


@pytest.mark.slow  # the labeled output (the first test pays for it)
def test_nvdec_labeled_clips_verified_by_pixel_tolerance(labeled, tmp_path, capsys):
    out = _as_nvdec(labeled, tmp_path, fake_sha_for="a")
    rc, stdout, audit = _audit(out, labeled, capsys)
    assert rc == 0, stdout
    rows = {(r["video_id"], r["clip_index"]): r for r in pq.read_table(audit / "clips.parquet").to_pylist()}
    assert len(rows) == 4
    for (vid, _), r in rows.items():
        assert r["decoder"] == "nvdec"
        if vid == "a":  # the stored sha is not the CPU path's: tolerance
            assert r["input_status"] == "ok_tolerance" and r["input_check"] == "tolerance"
            assert r["pixel_max_abs_diff"] == 0 and r["pixel_mean_abs_diff"] == 0.0  # on the CPU: identical
            assert r["redecoded_sha"] != r["clip_sha"] and r["host_logits"] is not None
        else:  # the CPU path re-created the exact bytes: sha, as before
            assert r["input_status"] == "ok" and r["input_check"] == "sha" and r["pixel_max_abs_diff"] is None
    summary = json.loads((audit / "summary.json").read_text())
    assert summary["verified"] == 4 and summary["input_status"] == {"ok": 2, "ok_tolerance": 2}
    tol = summary["pixel_tolerance"]
    assert tol == {"clips": 2, "max_abs_threshold": 3, "mean_abs_threshold": 0.5, "max_abs": 0, "mean_abs_worst": 0.0}
    md = (audit / "summary.md").read_text()
    assert "2 clips were labeled from NVDEC-decoded pixels and this machine has no NVDEC" in md
    assert "instead of clip_sha" in md and "tolerance 3" in md


def test_changed_source_is_still_caught(labeled, tmp_path, capsys):
    out = _as_nvdec(labeled, tmp_path, fake_sha_for="a")
    videos = tmp_path / "videos"
    shutil.copytree(labeled["videos"], videos)
    for part in out.glob("clips/part-*.parquet"):  # point the clips at the copies
        t = pq.read_table(part)
        uris = [str(videos / Path(u).name) for u in t.column("uri").to_pylist()]
        pq.write_table(t.set_column(t.schema.get_field_index("uri"), "uri", pa.array(uris, pa.string())), part)
    make_yuv_video(videos / "a.mp4", 96, 64, pattern="noise", n=66, lossless=False)  # a re-encoded: new content
    rc, stdout, audit = _audit(out, labeled, capsys)
    assert rc == 1 and "| unverified inputs | 2 | <= 0 | **NO** |" in stdout
    rows = [r for r in pq.read_table(audit / "clips.parquet").to_pylist() if r["video_id"] == "a"]
    assert {r["input_status"] for r in rows} == {"sha_mismatch"}
    assert all("labeled from NVDEC output; the source changed since labeling" in r["input_error"] for r in rows)
