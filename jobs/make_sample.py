"""Write a small sample collection: synthetic videos + a manifest (one row per video).

python jobs/make_sample.py DIR [--videos N] [--seconds S] [--bad]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from r2p1d_batch.synth import make_video  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", type=Path)
    p.add_argument("--videos", type=int, default=4)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--bad", action="store_true", help="add a missing and a corrupt file (error rows)")
    args = p.parse_args(argv)
    vdir = args.dir / "videos"
    vdir.mkdir(parents=True, exist_ok=True)
    uris = []
    for i in range(args.videos):
        path = vdir / f"sample_{i:03d}.mp4"
        make_video(path, n_frames=int(args.seconds * 30), fps=30, size=(320, 240), pattern="moving", seed=i)
        uris.append(str(path.resolve()))
    if args.bad:
        (vdir / "corrupt.mp4").write_text("not a video")
        uris += [str((vdir / "corrupt.mp4").resolve()), str((vdir / "missing.mp4").resolve())]
    manifest = args.dir / "manifest.parquet"
    pq.write_table(pa.table({"uri": uris, "source": ["synthetic"] * len(uris)}), manifest)
    print(manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
