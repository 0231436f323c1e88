"""`r2p1d quantize ...` from a checkout, as `python jobs/quantize.py ...` (e.g. under `ray job
submit --working-dir .`, on a CPU node like the fleet's). See `r2p1d quantize --help`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's package, installed or not
from r2p1d_batch.cli import main

if __name__ == "__main__":
    sys.exit(main(["quantize", *sys.argv[1:]]))
