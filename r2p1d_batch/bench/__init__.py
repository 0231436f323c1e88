"""Benchmarks of each stage, measured side by side in one run (``python jobs/bench.py``).

Modules: inputs (cached synthetic videos), decode (ours vs ffmpeg CLI vs decord, sparse
sampling, scaler fidelity), model (runtimes), e2e (pipeline vs stages vs a naive loop),
memory (peak RSS of the job on short and long video), report (table + JSON).
"""
