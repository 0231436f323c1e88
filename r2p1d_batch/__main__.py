"""python -m r2p1d_batch COMMAND ... == r2p1d COMMAND ..."""
import sys

from .cli import main

sys.exit(main())
