"""Driver decisions before any work: the manifest, which rows to label, how big each stage is
and where it runs.

- ``manifest``: reading and validating the manifest.
- ``sizing``: unset resource keys sized to the cluster (pure).
- ``placement``: node labels and resources per stage, Ray's retry policy, the check that decode,
  classify and write stay three operators.
"""
