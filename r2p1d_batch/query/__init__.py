"""DuckDB over committed runs (local or s3://): ``connect(OUT)`` gives the views ``clips``,
``videos``, ``clips_all``, ``videos_all``, ``runs`` and ``segments``; ``report`` runs a ready
report.

- ``views``: the views and the "current" rule in SQL, the ready reports.
- ``curation``: the ``segments`` view, the typed embedding, the similar/duplicates/segments reports.
- ``duplicates``: the exact all-pairs search over embeddings, in BLAS tiles.
"""
from .views import (
    COMMITTED_SQL,
    CURRENT_CLIPS_SQL,
    CURRENT_VIDEOS_SQL,
    REPORT_PARAMS,
    REPORTS,
    NoCommittedRuns,
    ReportError,
    committed_sql,
    connect,
    current_sql,
    report,
)

__all__ = [
    "COMMITTED_SQL", "CURRENT_CLIPS_SQL", "CURRENT_VIDEOS_SQL", "REPORTS", "REPORT_PARAMS", "NoCommittedRuns",
    "ReportError", "committed_sql", "connect", "current_sql", "report",
]
