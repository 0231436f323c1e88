"""Benchmarks of each stage, measured side by side in one run (``r2p1d bench``, ``python jobs/bench.py``).

Modules: suite (the sections, a table of functions, and the modes' sizes), inputs (cached synthetic
videos), decode (ours vs ffmpeg CLI vs decord, sparse sampling, scaler fidelity), levers (cheaper
decode settings), model (runtimes), roofline, e2e (pipeline vs stages vs a naive loop), memory
(peak RSS of the job on short and long video), overhead (per-video), node (GPU node), curate
(embedding cost, bytes per clip, the duplicate report; ``--only curate``), output (table + JSON).
"""
