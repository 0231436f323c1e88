"""One run's output: labeled rows in, committed ``clips`` and ``videos`` Parquet out.

- ``aggregate``: a video's rows reassembled, video-level top-k (pure).
- ``writer``: output rows, the run summary and clock.
- ``commit``: staging under a lease, publish, the commit record, sweeping killed runs.
- ``incremental``: the committed ``videos`` rows and the "current" rule.
- ``summary``: ``RunSummary``, what a run did.
"""
