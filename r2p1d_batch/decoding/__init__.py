"""Source video -> uint8 clips (16x112x112x3), the model's exact input.

- ``sampling``: which clips (dense / uniform / zoo windows), pure arithmetic.
- ``pyav``: the CPU decoder (PyAV): probe, seek, decode only the needed spans.
- ``preprocess``, ``crop_taps``, ``colour``: the preset's resize + crop, from only the pixels the
  crop reads, and swscale's YUV -> RGB in torch (any device).
- ``fidelity``: the budget a cheaper decode setting must stay inside.
- ``nvdec``, ``choice``, ``lanes``: the NVDEC path, which videos it takes, the NVDEC decode lane.
- ``faults``: per-video time limit, crash ledger, the gate to test-only hooks.
- ``stage``: the Ray decode stage (one manifest row in, its clip rows and one video row out).
"""
