"""Curating a labeled collection: similar clips and near duplicates (embeddings), action
segments, and a self-contained HTML report.

- ``sql``: the ``segments`` view, the typed ``embedding`` column and the ready reports that
  ``query.py`` adds (``segments``, ``similar``, ``duplicates``).
- ``duplicates``: the exact all-pairs search over embeddings, in BLAS tiles.
- ``thumbs``: middle-frame thumbnails decoded with the job's own decoder (placeholders say why not).
- ``report``: the HTML report (label chart, contact sheets, segment timelines, run summary, errors).
"""
