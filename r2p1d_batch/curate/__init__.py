"""Curating a labeled collection: the self-contained HTML report of ``r2p1d report``.

- ``html``: the report (label chart, contact sheets, segment timelines, run summary, errors).
- ``thumbs``: middle-frame thumbnails decoded with the job's own decoder (placeholders say why not).

The SQL side of curation (segments, similar clips, near duplicates) is in ``query/``.
"""
