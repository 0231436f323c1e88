"""Test helpers, in one place: synthetic inputs (``videos``), rows handed to the run writer
(``labeled``), what a run committed (``outputs``), real services on loopback (``s3``: moto's
server and a fault proxy; ``ray_head``: a ``ray start`` head; ``hub_emulator``: AI Hub's REST
API), and the session's local Ray (``local_ray``). Fixtures reach tests through
``pytest_plugins`` in conftest.py."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
