"""`r2p1d report ...` from a checkout, as `python jobs/report.py ...` (what `ray job submit
--working-dir .` and the infra/ manifests run). See `r2p1d report --help`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's package, installed or not
from r2p1d_batch.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
