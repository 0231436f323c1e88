"""Years of nightly runs at collection size: `r2p1d bench --only history` (bench/history.py) with
the sizes on the command line, e.g. the issue's 1M videos x 10 clips with 1 % relabeled a night
and `r2p1d maintain --keep-runs 7` after every 7th night (a weekly cron):

  .venv/bin/python scripts/history_at_scale.py --videos 1000000 --nights 15 --maintain-every 7 \
      --out docs/bench-history-1m.json

Rows are written directly (no decoding) and committed through the job's own commit; the
rewrites of copy-on-write run in one worker process per core (a label run gives them to Ray
tasks). A night at 1M rewrites about the whole `clips` table (~0.8 GB): disk holds
(maintain_every + 1) tables' worth between maintenances, so --maintain-every 0 needs nights x that.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from r2p1d_batch.bench.history import history_rows  # noqa: E402
from r2p1d_batch.bench.output import machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=1_000_000)
    ap.add_argument("--clips-per-video", type=int, default=10)
    ap.add_argument("--nights", type=int, default=15)
    ap.add_argument("--churn", type=float, default=0.01, help="share of the videos relabeled a night")
    ap.add_argument("--rows-per-file", type=int, default=50_000)
    ap.add_argument("--maintain-every", type=int, default=7,
                    help="maintain (keeping that many runs) every N nights; 0: never")
    ap.add_argument("--keep-runs", type=int, default=1, help="the final maintain's --keep-runs")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where the synthesized output lives while measured")
    ap.add_argument("--out", default="history-at-scale.json")
    a = ap.parse_args()
    t = time.perf_counter()
    rows, notes = history_rows(a.videos, a.clips_per_video, a.nights, a.churn, a.rows_per_file, Path(a.dir),
                               keep_runs=a.keep_runs, maintain_every=a.maintain_every, workers=a.workers)
    result = {"args": vars(a), "machine": machine(), "rows": rows, "notes": notes,
              "wall_s": round(time.perf_counter() - t, 1)}
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
