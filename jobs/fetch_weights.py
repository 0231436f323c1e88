"""Make the Kinetics-400 weights available in the torch hub cache, or say where to put them.

Exit 0 when they are cached (or were just downloaded), 1 when they cannot be had here.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from r2p1d_batch.model import WeightsError, kinetics_checkpoint_path, load_model  # noqa: E402


def main() -> int:
    try:
        load_model("kinetics400")
    except WeightsError as e:
        print(e, file=sys.stderr)
        return 1
    print(kinetics_checkpoint_path())
    return 0


if __name__ == "__main__":
    sys.exit(main())
