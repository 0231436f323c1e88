"""Curation on a real labeled output: embeddings through the pipeline, the segments view, the
similar / duplicates reports (library and `r2p1d query`), and the HTML report rendered in a real
headless Chromium (Debian's package; scripts/install_os_deps.sh installs it in CI). Local and
s3:// (moto on loopback)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from r2p1d_batch import config, query, schema
from r2p1d_batch.query.duplicates import pairs
from r2p1d_batch.schema import embedding_array

from tests.helpers import REPO
from tests.helpers.videos import make_video

CHROMIUM = "/usr/bin/chromium"


# -- a labeled output with embeddings, then sources deleted / damaged ---------------------------
@pytest.fixture(scope="module")
def labeled(ray_local, tmp_path_factory):
    from r2p1d_batch.pipeline import label as run

    d = tmp_path_factory.mktemp("curate")
    src = {
        "walk": make_video(d / "walk.mp4", n_frames=75, fps=25, size=(128, 96), pattern="moving"),  # 2 clips
        "noise": make_video(d / "noise.mp4", n_frames=66, fps=30, pattern="noise", seed=3),  # 2 clips
        "gone": make_video(d / "gone.mp4", n_frames=30, fps=15, pattern="moving", seed=1),
        "broken": make_video(d / "broken.mp4", n_frames=30, fps=15, pattern="noise", seed=4),
    }
    src["dup"] = Path(shutil.copy(src["noise"], d / "dup.mp4"))  # the same clips under another id
    (d / "text.mp4").write_text("not a video")
    uris = {**{k: str(v) for k, v in src.items()}, "missing": str(d / "missing.mp4"), "text": str(d / "text.mp4")}
    m = d / "manifest.parquet"
    pq.write_table(pa.table({"video_id": list(uris), "uri": list(uris.values())}), m)
    out = d / "out"
    cfg = config.load(overrides=["model.weights=random", "output.embeddings=true", "model.batch_size=4",
                                 "ray.progress_bars=false"], manifest=str(m), **{"output.path": str(out)})
    summary = run(cfg)
    assert summary.committed and summary.videos_ok == 5 and summary.videos_error == 2
    # After labeling: one source deleted, one overwritten with junk. Neither may fail a report.
    src["gone"].unlink()
    src["broken"].write_bytes(b"\x00junk" * 200)
    return {"out": str(out), "dir": d, "uris": uris, "summary": summary}


@pytest.fixture(scope="module")
def con(labeled):
    return query.connect(labeled["out"])


@pytest.mark.ray
@pytest.mark.slow
def test_pipeline_stores_unit_embeddings_duckdb_reads_as_float512(con):
    types = dict(con.sql("SELECT column_name, column_type FROM (DESCRIBE clips)").fetchall())
    assert types["embedding"] == "FLOAT[512]"
    n, with_emb, min_norm, max_norm = con.sql(
        "SELECT count(*), count(embedding), min(sqrt(array_inner_product(embedding, embedding))), "
        "max(sqrt(array_inner_product(embedding, embedding))) FROM clips").fetchall()[0]
    assert n == with_emb == 8  # walk 2, noise 2, dup 2, gone 1, broken 1
    assert min_norm == pytest.approx(1.0, abs=1e-5) and max_norm == pytest.approx(1.0, abs=1e-5)


@pytest.mark.ray
def test_segments_are_runs_of_equal_labels(con):
    clips = con.sql("SELECT video_id, label, start_sec, end_sec, score FROM clips "
                    "ORDER BY video_id, start_sec").fetchall()
    expect: list[tuple] = []
    for vid, label, start, end, score in clips:
        if expect and expect[-1][0] == vid and expect[-1][1] == label:
            v, lab, s, _, n, tot = expect[-1]
            expect[-1] = (v, lab, s, end, n + 1, tot + score)
        else:
            expect.append((vid, label, start, end, 1, score))
    got = con.sql("SELECT video_id, label, start_sec, end_sec, num_clips, mean_score FROM segments "
                  "ORDER BY video_id, start_sec").fetchall()
    assert [g[:5] for g in got] == [e[:5] for e in expect]
    assert [g[5] for g in got] == pytest.approx([e[5] / e[4] for e in expect], abs=1e-6)
    walk = query.report(con, "segments", video_id="walk").fetchall()
    assert sum(r[4] for r in walk) == 2 and walk[0][0] == 1


def test_segments_on_a_handmade_output(tmp_path):
    labels = {"v1": ["a", "a", "b", "b", "b", "a"], "v2": ["c"]}
    rows = [dict(video_id=v, clip_index=i, start_sec=float(i), end_sec=i + 1.07, label=lab, score=0.5 + i / 100)
            for v, labs in labels.items() for i, lab in enumerate(labs)]
    _write_output(tmp_path, rows[::-1])  # stored out of order
    c = query.connect(str(tmp_path))
    got = query.report(c, "segments", video_id="v1").fetchall()
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in got] == [(1, "a", 0.0, 2.07, 2), (2, "b", 2.0, 5.07, 3),
                                                             (3, "a", 5.0, 6.07, 1)]
    assert got[1][5] == pytest.approx(0.53)
    # No embeddings in this output (labeled without output.embeddings): a message, not a crash.
    with pytest.raises(ValueError, match="output.embeddings=true"):
        query.report(c, "duplicates")
    with pytest.raises(ValueError, match="has no embedding"):
        query.report(c, "similar", clip="v1:0")
    with pytest.raises(ValueError, match="no current clip v1:99"):
        query.report(c, "similar", clip="v1:99")
    with pytest.raises(ValueError, match="VIDEO_ID:CLIP_INDEX"):
        query.report(c, "similar", clip="v1")


@pytest.mark.ray
def test_similar_finds_the_copied_video_first(con):
    rows = query.report(con, "similar", clip="noise:1", k=4).fetchall()
    assert len(rows) == 4
    assert (rows[0][0], rows[0][1]) == ("dup", 1) and rows[0][6] == pytest.approx(1.0, abs=1e-4)
    sims = [r[6] for r in rows]
    assert sims == sorted(sims, reverse=True) and ("noise", 1) not in [(r[0], r[1]) for r in rows]


@pytest.mark.ray
def test_duplicates_equal_duckdb_brute_force_and_find_the_copy(con):
    # A random-weights network maps statistically alike clips (two noise videos) to nearly the
    # same feature, so the expected set comes from DuckDB's own cosine over every pair.
    rows = query.report(con, "duplicates", threshold=0.999).fetchall()
    brute = con.sql("SELECT a.video_id, a.clip_index, b.video_id, b.clip_index FROM clips a, clips b "
                    "WHERE a.video_id < b.video_id AND array_cosine_similarity(a.embedding, b.embedding) >= 0.999"
                    ).fetchall()
    assert sorted((r[1], r[2], r[5], r[6]) for r in rows) == sorted(brute)
    copies = {(r[1], r[2], r[5], r[6]): r[0] for r in rows}
    assert copies[("dup", 0, "noise", 0)] >= 0.9999 and copies[("dup", 1, "noise", 1)] >= 0.9999
    assert [r[0] for r in rows] == sorted((r[0] for r in rows), reverse=True)
    everything = query.report(con, "duplicates", threshold=-1.0).fetchall()
    n_per_video = dict(con.sql("SELECT video_id, count(*) FROM clips GROUP BY 1").fetchall())
    total = sum(n_per_video.values())
    cross = (total * total - sum(n * n for n in n_per_video.values())) // 2
    assert len(everything) == cross and all(r[1] != r[5] for r in everything)


def test_pair_search_equals_brute_force_across_tiles():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((6, 64))
    x = centres[rng.integers(0, 6, 700)] + 0.35 * rng.standard_normal((700, 64))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    groups = rng.integers(0, 150, 700)
    i, j, s, total = pairs(x, groups, 0.8, tile=128, max_pairs=10**9)
    sims = x @ x.T
    bi, bj = np.nonzero(np.triu(sims >= 0.8, 1) & (groups[:, None] != groups[None, :]))
    assert total == len(bi) > 1000
    assert set(zip(i.tolist(), j.tolist())) == set(zip(bi.tolist(), bj.tolist()))
    np.testing.assert_allclose(s, sims[i, j], atol=1e-6)
    ti, tj, ts, ttotal = pairs(x, groups, 0.8, tile=128, max_pairs=50)  # truncated: the best 50
    assert ttotal == total and len(ts) == 50 and np.allclose(ts, np.sort(sims[bi, bj])[::-1][:50], atol=1e-6)


def _query_cli(out: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "jobs" / "query.py"), out, *args], capture_output=True,
                          text=True, timeout=300, cwd=REPO)


@pytest.mark.ray
def test_query_cli_curation_reports(labeled):
    out = labeled["out"]
    p = _query_cli(out, "--report", "duplicates", "--threshold", "0.999", "--format", "json")
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    got = {(r["video_a"], r["clip_a"], r["video_b"], r["clip_b"]): r["cosine"] for r in rows}
    assert got[("dup", 0, "noise", 0)] >= 0.9999 and got[("dup", 1, "noise", 1)] >= 0.9999
    assert all(r["video_a"] != r["video_b"] and r["cosine"] >= 0.999 for r in rows)
    p = _query_cli(out, "--report", "similar", "--clip", "noise:0", "--k", "2", "--format", "csv")
    assert p.returncode == 0 and p.stdout.splitlines()[1].startswith('"dup",0,'), p.stdout + p.stderr
    p = _query_cli(out, "--report", "segments", "--video-id", "walk")
    assert p.returncode == 0 and "mean_score" in p.stdout
    p = _query_cli(out, "--report", "similar")
    assert p.returncode == 2 and "needs --clip" in p.stderr
    p = _query_cli(out, "--report", "similar", "--clip", "nope:0")
    assert p.returncode == 2 and "no current clip nope:0" in p.stderr


# -- the HTML report, in a real browser ---------------------------------------------------------
PROBE = """<script>
addEventListener('load', () => {
  const q = s => [...document.querySelectorAll(s)];
  const r = {
    images: q('figure.thumb img').map(i => ({complete: i.complete, w: i.naturalWidth, h: i.naturalHeight,
                                             shown: i.getBoundingClientRect().width})),
    placeholders: q('figure.thumb .placeholder').map(p => ({video: p.closest('figure').dataset.video,
                                                            text: p.textContent,
                                                            shown: p.getBoundingClientRect().height})),
    sheets: q('section.sheet').map(s => s.dataset.label),
    bars: q('#label-chart rect.bar').map(b => ({label: b.dataset.label, clips: +b.dataset.clips,
                                                w: b.getBoundingClientRect().width})),
    timelines: q('#timelines .tl').map(t => t.dataset.video),
    segments: q('#timelines .segment').map(s => ({label: s.dataset.label, w: s.getBoundingClientRect().width})),
    errors: q('#errors-table tbody tr').map(tr => [...tr.cells].map(c => c.textContent)),
    runs: q('#runs-table tbody tr').length,
    banner: !!document.getElementById('random-weights'),
  };
  const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(r);
  document.body.appendChild(pre);
});
</script>"""


def _chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    assert Path(CHROMIUM).exists(), "chromium missing: run scripts/install_os_deps.sh"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp / 'chromium-profile'}", "--virtual-time-budget=5000"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


def _probe(page: str, tmp: Path) -> dict:
    """Render ``page`` (the report plus the probe; the page's CSP lets only inline scripts in
    besides what the report allows) and return what the browser saw."""
    probed = tmp / "probed.html"
    probed.write_text(page.replace("style-src 'unsafe-inline'", "style-src 'unsafe-inline'; script-src 'unsafe-inline'")
                      .replace("</body>", PROBE + "</body>"))
    p = _chromium(["--dump-dom", probed.as_uri()], tmp)
    assert p.returncode == 0, p.stderr[-2000:]
    start = p.stdout.index('<pre id="probe">') + len('<pre id="probe">')
    import html

    return json.loads(html.unescape(p.stdout[start : p.stdout.index("</pre>", start)]))


@pytest.mark.ray
def test_report_renders_in_headless_chromium(labeled, con, tmp_path):
    page = tmp_path / "report.html"
    p = subprocess.run([sys.executable, str(REPO / "jobs" / "report.py"), labeled["out"], "--html", str(page)],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert p.returncode == 0, p.stdout + p.stderr
    text = page.read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text  # self-contained
    seen = _probe(text, tmp_path)

    n_labels = con.sql("SELECT count(DISTINCT label) FROM clips").fetchall()[0][0]
    assert [b["label"] for b in seen["bars"]] == [r[0] for r in query.report(con, "labels").fetchall()][:30]
    assert len(seen["bars"]) == min(n_labels, 30) and all(b["w"] > 0 for b in seen["bars"])
    assert sorted(seen["sheets"]) == sorted({b["label"] for b in seen["bars"]})[: len(seen["sheets"])]
    # Thumbnails decoded and displayed; the deleted and the damaged source as placeholders saying why.
    assert seen["images"] and all(i["complete"] and i["w"] > 0 and i["shown"] > 0 for i in seen["images"])
    why = {p["video"]: p["text"] for p in seen["placeholders"]}
    assert set(why) == {"gone", "broken"} and all(p["shown"] > 0 for p in seen["placeholders"])
    assert "source not found" in why["gone"] and "cannot decode" in why["broken"]
    n_thumbs = con.sql("SELECT count(*) FROM clips WHERE video_id NOT IN ('gone', 'broken')").fetchall()[0][0]
    assert len(seen["images"]) == min(n_thumbs, 8 * len(seen["sheets"]))  # every readable clip shown here
    assert f"{len(seen['images'])} thumbnails, {len(seen['placeholders'])} placeholders" in p.stdout
    # One strip per labeled video, one coloured block per segment, all laid out.
    assert sorted(seen["timelines"]) == ["broken", "dup", "gone", "noise", "walk"]
    n_segments = con.sql("SELECT count(*) FROM segments").fetchall()[0][0]
    assert len(seen["segments"]) == n_segments and all(s["w"] > 0 for s in seen["segments"])
    errors = {r[0]: r[2] for r in seen["errors"]}
    assert errors == {"missing": "NotFound", "text": "InvalidData"}
    assert seen["runs"] == 1 and seen["banner"]

    shot = tmp_path / "shot.png"
    p = _chromium([f"--screenshot={shot}", "--window-size=1280,1600", page.as_uri()], tmp_path)
    import cv2

    img = cv2.imread(str(shot))
    assert p.returncode == 0 and img is not None and img.shape[:2] == (1600, 1280) and img.std() > 10


@pytest.mark.ray
def test_report_of_an_s3_output_with_s3_sources(labeled, s3_env, tmp_path):
    """The same output and its (remaining) sources copied to S3, uris rewritten: the report reads
    Parquet and decodes thumbnails through S3 and is written to S3."""
    from r2p1d_batch.curate.html import write_report

    bucket = s3_env.bucket("curate")
    to_s3 = {}
    for uri in labeled["uris"].values():
        if Path(uri).exists():
            to_s3[uri] = s3_env.put(bucket, f"videos/{Path(uri).name}", uri)
        else:
            to_s3[uri] = f"s3://{bucket}/videos/{Path(uri).name}"  # gone there too
    # The output's uris rewritten the way a user would: a Delta UPDATE of a copy (a new table
    # version; the files it replaced stay for the history views), then every file uploaded.
    out = tmp_path / "labels"
    shutil.copytree(labeled["out"], out)
    for table in ("clips", "videos"):
        DeltaTable(str(out / table)).update(
            {"uri": f"replace(uri, '{labeled['dir']}/', 's3://{bucket}/videos/')"})
    for f in out.rglob("*"):
        if f.is_file():
            s3_env.put(bucket, f"labels/{f.relative_to(out)}", f)
    stats = write_report(f"s3://{bucket}/labels", f"s3://{bucket}/reports/r.html")
    assert stats.thumbnails > 0 and stats.placeholders >= 1 and stats.errors == 2
    page = s3_env.client().get_object(Bucket=bucket, Key="reports/r.html")["Body"].read().decode()
    assert page.count('<figure class="thumb"') == stats.thumbnails + stats.placeholders
    assert "source not found" in page and "data:image/jpeg;base64," in page


# -- helpers -------------------------------------------------------------------------------------
def _write_output(root: Path, clip_rows: list[dict], embeddings: np.ndarray | None = None) -> None:
    """A committed one-run output written by hand (the writer's schemas)."""
    n = len(clip_rows)
    cols = {f.name: pa.nulls(n, f.type) for f in schema.CLIPS}
    for name in clip_rows[0]:
        cols[name] = pa.array([r[name] for r in clip_rows], schema.CLIPS.field(name).type)
    cols["weights"] = pa.array(["w"] * n)
    if embeddings is not None:
        cols["embedding"] = embedding_array(embeddings, n, np.arange(n))
    vids = sorted({r["video_id"] for r in clip_rows})
    vcols = {f.name: pa.nulls(len(vids), f.type) for f in schema.VIDEOS}
    vcols.update(video_id=pa.array(vids), status=pa.array(["ok"] * len(vids)), weights=pa.array(["w"] * len(vids)),
                 source_fingerprint=pa.array(["f"] * len(vids)))
    for table, t in (("clips", pa.table(cols, schema=schema.CLIPS)), ("videos", pa.table(vcols, schema=schema.VIDEOS))):
        (root / table / "run_id=r1").mkdir(parents=True)
        pq.write_table(t, root / table / "run_id=r1" / "part-00000.parquet")
    (root / "_runs").mkdir()
    (root / "_runs" / "run_id=r1.json").write_text(json.dumps({"run_id": "r1", "committed": True, "files": [
        "clips/run_id=r1/part-00000.parquet", "videos/run_id=r1/part-00000.parquet"]}))
