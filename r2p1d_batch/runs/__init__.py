"""One run's output: labeled rows in, committed ``clips`` and ``videos`` Parquet out.

- ``clip_writer``: the writer stage on the workers: a clip part file per batch, a report per file.
- ``aggregate``: videos finished from per-file clip sums, video-level top-k (pure).
- ``writer``: the driver's side: reports in, `videos` rows, the run summary and clock, commit.
- ``commit``: staging under a lease, publish, the commit record, sweeping killed runs.
- ``incremental``: the committed ``videos`` rows and the "current" rule.
- ``summary``: ``RunSummary``, what a run did.
"""
