"""The visual report: one self-contained HTML file (images embedded, no script, no request).

Sections, all from the query module's views (committed runs, current rows):
1. the runs' summaries (a banner when a run used random weights),
2. the label histogram as a bar chart (inline SVG),
3. a contact sheet per label: the middle frame of its top-scoring clips (best clip of each
   video first, so one long video does not fill a sheet), with video id, time and score;
   thumbnails decoded from the sources (``thumbs.py``), a placeholder saying why when a source
   cannot be read,
4. a timeline strip per video, coloured by action segment (the ``segments`` view),
5. the error rows (videos that produced no labels) with their messages.
"""
from __future__ import annotations

import hashlib
import html
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from typing import Optional

from .. import query
from ..config import DecodeConfig, StorageConfig
from ..runs import commit
from ..storage import filesystem
from .thumbs import Thumb, source_thumbs

log = logging.getLogger("r2p1d_batch.curate")

# Content-Security-Policy of the page: nothing outside the file can load, so a report that
# renders with its images is proven self-contained.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


@dataclass(frozen=True)
class ReportOptions:
    labels: int = 24  # contact sheets for the most frequent labels
    per_label: int = 8  # thumbnails per contact sheet
    videos: int = 100  # timeline strips (videos in id order)
    errors: int = 500  # error rows listed
    threads: int = 4  # sources decoded at once for thumbnails


@dataclass
class ReportStats:
    path: str
    bytes: int
    thumbnails: int
    placeholders: int
    labels: int
    videos: int
    errors: int
    seconds: float


TOP_CLIPS_SQL = """
WITH top_labels AS (
    SELECT label FROM clips GROUP BY label ORDER BY count(*) DESC, label LIMIT $labels
), ranked AS (
    SELECT c.*, row_number() OVER (PARTITION BY c.label, c.video_id ORDER BY c.score DESC, c.clip_index) AS in_video
    FROM clips c SEMI JOIN top_labels t ON c.label = t.label
)
SELECT r.label, r.video_id, r.uri, r.clip_index, r.start_sec, r.end_sec, r.frame_pts, r.score, r.run_id,
       v.source_fingerprint
FROM ranked r JOIN videos v ON v.run_id = r.run_id AND v.video_id = r.video_id
QUALIFY row_number() OVER (PARTITION BY r.label
                           ORDER BY r.in_video, r.score DESC, r.video_id, r.clip_index) <= $per_label
ORDER BY r.label, r.in_video, r.score DESC"""

TIMELINE_VIDEOS_SQL = """
SELECT video_id, uri, duration_sec, label, score, num_clips, run_id
FROM videos WHERE status = 'ok' AND num_clips > 0 ORDER BY video_id, run_id LIMIT $videos"""

TIMELINE_SEGMENTS_SQL = """
SELECT s.video_id, s.run_id, s.segment, s.label, s.start_sec, s.end_sec, s.num_clips, s.mean_score
FROM segments s SEMI JOIN ({videos}) v ON s.video_id = v.video_id AND s.run_id = v.run_id
ORDER BY s.video_id, s.run_id, s.start_sec"""


def label_colour(label: str) -> str:
    """A stable colour per label (same label, same colour, in every report)."""
    h = int(hashlib.sha1(label.encode()).hexdigest()[:8], 16)
    return f"hsl({h % 360}, {55 + h // 360 % 25}%, {42 + h // 9000 % 18}%)"


def _rows(rel) -> list[dict]:
    return rel.to_arrow_table().to_pylist()


def _decode_cfg(run: dict) -> DecodeConfig:
    return DecodeConfig.model_validate((run.get("config") or {}).get("decode", {}))


def thumbnails(rows: list[dict], run_records: dict[str, dict], storage=None, threads: int = 4) -> list[Thumb]:
    """A thumbnail (or placeholder) per row; each source is opened once."""
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault((r["run_id"], r["uri"]), []).append(i)
    out: list[Optional[Thumb]] = [None] * len(rows)

    def one(key):
        idx = groups[key]
        cfg = _decode_cfg(run_records.get(key[0], {}))
        return idx, source_thumbs([rows[i] for i in idx], cfg, storage)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for idx, thumbs in pool.map(one, list(groups)):
            for i, t in zip(idx, thumbs):
                out[i] = t
    return [t or Thumb(reason="no thumbnail") for t in out]


# -- HTML ------------------------------------------------------------------------------------
def _e(v) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _sec(v) -> str:
    return "?" if v is None else f"{v:.1f}"


STYLE = (resources.files(__package__) / "report.css").read_text()  # package data, inlined in the page


def _chart(hist: list[dict], top: int = 30) -> str:
    if not hist:
        return '<p class="muted" id="no-labels">No labeled clips.</p>'
    shown = hist[:top]
    rest = sum(h["clips"] for h in hist[top:])
    if rest:
        other = {"label": f"{len(hist) - top} other labels", "clips": rest, "videos": None, "mean_score": None}
        shown = shown + [other]
    peak = max(h["clips"] for h in shown)
    bar_h, label_w, bar_w = 18, 230, 520
    parts = [f'<svg width="{label_w + bar_w + 90}" height="{len(shown) * bar_h + 4}" '
             f'role="img" aria-label="clips per label">']
    for i, h in enumerate(shown):
        y = i * bar_h + 2
        w = max(1.0, bar_w * h["clips"] / peak)
        colour = label_colour(h["label"]) if h["videos"] is not None else "#999"
        title = f'{h["label"]}: {h["clips"]} clips' + (f', {h["videos"]} videos, mean score {h["mean_score"]}'
                                                        if h["videos"] is not None else "")
        parts.append(
            f'<g class="bar-row"><title>{_e(title)}</title>'
            f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end" font-size="12">{_e(h["label"])}</text>'
            f'<rect class="bar" data-label="{_e(h["label"])}" data-clips="{h["clips"]}" x="{label_w}" y="{y}" '
            f'width="{w:.1f}" height="{bar_h - 4}" fill="{colour}"/>'
            f'<text x="{label_w + w + 4:.1f}" y="{y + 13}" font-size="12">{h["clips"]}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def _sheet(label: str, rows: list[tuple[dict, Thumb]], total: int) -> str:
    figs = []
    for r, t in rows:
        cap = (f'<b>{_e(r["video_id"])}</b> #{r["clip_index"]}<br>{_sec(r["start_sec"])}–{_sec(r["end_sec"])} s · '
               f'score {r["score"]:.3f}')
        if t.data_uri:
            media = (f'<img src="{t.data_uri}" width="{t.width}" height="{t.height}" '
                     f'alt="{_e(r["video_id"])} at {_sec(r["start_sec"])} s">')
            if t.reason:
                cap += f'<br><span class="note">{_e(t.reason)}</span>'
        else:
            media = f'<div class="placeholder" title="{_e(r["uri"])}">{_e(t.reason)}</div>'
        figs.append(f'<figure class="thumb" data-video="{_e(r["video_id"])}" data-clip="{r["clip_index"]}">'
                    f'{media}<figcaption>{cap}</figcaption></figure>')
    return (f'<section class="sheet" data-label="{_e(label)}"><h3><span class="swatch" '
            f'style="background:{label_colour(label)}"></span>{_e(label)} '
            f'<span class="muted">({total} clip{"s" * (total != 1)})</span></h3>'
            f'<div class="grid">{"".join(figs)}</div></section>')


def _timeline(v: dict, segs: list[dict]) -> str:
    span = max([v["duration_sec"] or 0.0] + [s["end_sec"] or 0.0 for s in segs]) or 1.0
    parts, labels = [], {}
    for s in segs:
        left = 100.0 * (s["start_sec"] or 0.0) / span
        width = max(0.3, 100.0 * ((s["end_sec"] or 0.0) - (s["start_sec"] or 0.0)) / span)
        labels.setdefault(s["label"], 0)
        labels[s["label"]] += s["num_clips"]
        tip = (f'{s["label"]}: {_sec(s["start_sec"])}–{_sec(s["end_sec"])} s, {s["num_clips"]} clips, '
               f'mean score {s["mean_score"]:.3f}')
        parts.append(f'<div class="segment" data-label="{_e(s["label"])}" title="{_e(tip)}" '
                     f'style="left:{left:.2f}%;width:{width:.2f}%;background:{label_colour(s["label"])}"></div>')
    legend = "".join(f'<span class="swatch" style="background:{label_colour(lab)}"></span>{_e(lab)}'
                     for lab, _ in sorted(labels.items(), key=lambda kv: -kv[1])[:4])
    more = f" +{len(labels) - 4}" if len(labels) > 4 else ""
    return (f'<div class="tl" data-video="{_e(v["video_id"])}"><span class="vid" title="{_e(v["uri"])}">'
            f'{_e(v["video_id"])}</span>'
            f'<div class="strip" title="{_e(v["video_id"])}: {span:.1f} s">{"".join(parts)}</div>'
            f'<span class="legend">{_sec(span)} s · {len(segs)} segment{"s" * (len(segs) != 1)}{legend}{more}'
            '</span></div>')


def _table(rows: list[dict], cols: list[str], table_id: str, num: tuple = ()) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    def cls(c: str) -> str:
        return "num" if c in num else ("err" if c == "error" else "")

    body = "".join("<tr>" + "".join(f'<td class="{cls(c)}">{_e(r.get(c))}</td>' for c in cols) + "</tr>"
                   for r in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render(output: str, storage: Optional[StorageConfig] = None, opts: ReportOptions = ReportOptions()
           ) -> tuple[str, dict]:
    """(HTML text, counts) of the report over ``output`` (local or s3://)."""
    records = commit.committed_runs(output, storage)
    con = query.connect(output, storage)  # raises NoCommittedRuns when there is nothing to show
    by_run = {r["run_id"]: r for r in records}
    hist = _rows(query.report(con, "labels"))
    top = _rows(con.sql(TOP_CLIPS_SQL, params={"labels": opts.labels, "per_label": opts.per_label}))
    thumbs = thumbnails(top, by_run, storage, opts.threads)
    vids = _rows(con.sql(TIMELINE_VIDEOS_SQL, params={"videos": opts.videos}))
    segs = _rows(con.sql(TIMELINE_SEGMENTS_SQL.format(videos=TIMELINE_VIDEOS_SQL), params={"videos": opts.videos}))
    n_ok = con.sql("SELECT count(*) FROM videos WHERE status = 'ok' AND num_clips > 0").fetchall()[0][0]
    errors = _rows(con.sql(query.REPORTS["failed"] + f" LIMIT {int(opts.errors)}"))
    n_err = con.sql("SELECT count(*) FROM videos WHERE status <> 'ok'").fetchall()[0][0]
    totals = con.sql("SELECT count(*) AS clips, count(DISTINCT video_id) AS videos FROM clips").fetchall()[0]

    out = [f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
           f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
           f'<title>r2p1d-batch report: {_e(output)}</title><style>{STYLE}</style></head><body>',
           f'<h1>Action labels: {_e(output)}</h1><p class="muted" id="totals">{totals[0]} clips in {totals[1]} videos, '
           f'{n_err} videos with errors, {len(records)} committed runs; generated '
           f'{datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")} by r2p1d-batch</p>']
    if any(str(r.get("weights", "")).startswith("random:") for r in records):
        out.append('<div class="banner" id="random-weights"><b>Random weights:</b> some runs labeled with '
                   'seeded random weights (smoke runs); their labels are meaningless.</div>')
    run_rows = [{"run": r.get("run_id"), "committed": str(r.get("committed_at", ""))[:19].replace("T", " "),
                 "weights": r.get("weights"), "runtime": r.get("runtime"), "sampling": r.get("sampling"),
                 "videos": f'{r.get("videos", 0)} ({r.get("videos_ok", 0)} ok, {r.get("videos_error", 0)} error)',
                 "clips": r.get("clips"), "clips/s": r.get("clips_per_sec"),
                 "errors": ", ".join(f"{k} {v}" for k, v in sorted((r.get("errors_by_class") or {}).items()))}
                for r in records]
    out.append('<h2>Runs</h2><div id="runs">' + _table(
        run_rows, ["run", "committed", "weights", "runtime", "sampling", "videos", "clips", "clips/s", "errors"],
        "runs-table", num=("clips", "clips/s")) + "</div>")
    out.append(f'<h2>Labels</h2><div id="label-chart">{_chart(hist)}</div>')

    out.append(f'<h2>Contact sheets</h2><p class="muted">The middle frame of the top-scoring clips of the '
               f'{min(opts.labels, len(hist))} most frequent labels (best clip of each video first), '
               'decoded from the sources.</p>'
               '<div id="sheets">')
    clips_per_label = {h["label"]: h["clips"] for h in hist}
    pairs = list(zip(top, thumbs))
    for label in [h["label"] for h in hist if h["label"] in {r["label"] for r in top}]:  # most frequent first
        out.append(_sheet(label, [(r, t) for r, t in pairs if r["label"] == label], clips_per_label.get(label, 0)))
    out.append("</div>")

    out.append(f'<h2>Timelines</h2><p class="muted">{min(len(vids), n_ok)} of {n_ok} labeled videos; each strip is '
               'the video\'s length, coloured by action segment (consecutive clips with the same label).</p>'
               '<div id="timelines">')
    by_video: dict[tuple, list[dict]] = {}
    for s in segs:
        by_video.setdefault((s["video_id"], s["run_id"]), []).append(s)
    for v in vids:
        out.append(_timeline(v, by_video.get((v["video_id"], v["run_id"]), [])))
    out.append("</div>")

    out.append(f'<h2>Errors</h2><p class="muted">{n_err} videos produced no labels'
               + (f" (first {len(errors)} shown)" if n_err > len(errors) else "") + '.</p><div id="errors">'
               + (_table(errors, ["video_id", "uri", "error_class", "error", "run_id"], "errors-table")
                  if errors else "")
               + "</div></body></html>")
    shown = sum(1 for t in thumbs if t.data_uri)
    counts = dict(thumbnails=shown, placeholders=len(thumbs) - shown, labels=len(hist), videos=len(vids), errors=n_err)
    return "".join(out), counts


def write_report(output: str, html_path: str, storage: Optional[StorageConfig] = None,
                 opts: ReportOptions = ReportOptions()) -> ReportStats:
    """Render the report over ``output`` and write it to ``html_path`` (local or s3://)."""
    t0 = time.perf_counter()
    text, counts = render(output, storage, opts)
    data = text.encode()
    fs, path = filesystem(html_path, storage)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent and fs.protocol in ("file", "local", ("file", "local")):
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(data)
    return ReportStats(path=html_path, bytes=len(data), seconds=round(time.perf_counter() - t0, 3), **counts)
