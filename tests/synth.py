"""Tests import the synthetic-video helpers from here (``from synth import make_video``)."""
from r2p1d_batch.synth import frame_index, grey_of, level, make_audio_only, make_video  # noqa: F401
