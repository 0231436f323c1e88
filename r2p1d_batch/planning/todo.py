"""The rows a run labels, and how they reach Ray Data: as Arrow blocks, never as dicts.

The plan (pipeline.plan) leaves a ``Todo``: the manifest plus one bool per row. Stage 1 cuts the
selected rows, read back from the manifest's files one row group at a time, into the planned
decode input blocks (``blocks``: sizing.decode_blocks of them, sizes differing by at most one;
with the NVDEC lane on, every 1/share-th row to that lane's blocks, one video each). Each block
goes to Ray's object store as soon as it is cut, so the driver holds one row group and one block,
whatever the size of the run.

For the `videos` writer: every block row carries the manifest's pass-through columns (the extras,
``Manifest.extras``), so whatever writes a labeled video's row can take them from the row it was
given; ``Todo.table()`` reads them back on the driver.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pyarrow as pa

from ..decoding.lanes import nvdec_rows
from ..runs.incremental import take_rows
from .manifest import Manifest

CPU_LANE, NVDEC_LANE = "cpu", "nvdec"
NVDEC_MAX_BLOCKS = 4096  # the NVDEC lane's actors take one video per block, up to this many blocks


def block_sizes(rows: int, blocks: int) -> np.ndarray:
    """``rows`` split into ``blocks`` (at most ``rows``) consecutive runs whose sizes differ by
    at most one, the first ones larger."""
    blocks = max(1, min(blocks, rows)) if rows else 0
    base, extra = divmod(rows, blocks) if blocks else (0, 0)
    return np.array([base + 1] * extra + [base] * (blocks - extra), dtype=np.int64)


@dataclass
class Todo:
    """What the plan decided: ``mask[i]`` is True when manifest row i is labeled this run."""

    manifest: Manifest
    mask: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)  # rows per decision (incremental.DECISIONS)
    replaced: Optional[pa.Array] = None  # video ids whose current rows this run replaces (relabels)

    @property
    def num_rows(self) -> int:
        return int(self.mask.sum())

    def rows(self) -> Iterator[pa.Table]:
        """The selected rows (video_id, uri, start_sec, end_sec, extras), in manifest order."""
        if self.num_rows:
            yield from self.manifest.read(self.mask)

    def table(self) -> pa.Table:
        """The selected rows as one table (memory: the rows to label, not the manifest)."""
        parts = list(self.rows())
        return pa.concat_tables(parts) if parts else self.manifest.schema.empty_table()

    def writer_rows(self) -> pa.Table:
        """What runs/writer.RunWriter takes: one row per video to label (it counts them), with
        the extras it adds to their `videos` rows: video_id and the extras only, read from the
        manifest's files (memory: the rows to label, never the manifest)."""
        if not self.num_rows:
            return pa.schema([f for f in self.manifest.schema if f.name == "video_id" or
                              f.name in self.manifest.extras]).empty_table()
        if not self.manifest.extras:
            return pa.table({"video_id": take_rows(self.manifest.video_id, np.flatnonzero(self.mask))})
        return pa.concat_tables(self.manifest.read(self.mask, columns=["video_id", *self.manifest.extras]))

    def blocks(self, blocks: int, nvdec_share: Optional[float] = None) -> Iterator[tuple[str, pa.Table]]:
        """(lane, block) pairs, in manifest order within each lane: ``blocks`` blocks for the CPU
        lane (``block_sizes``) and, with ``nvdec_share``, every 1/share-th row to the NVDEC lane
        (``decoding.lanes.nvdec_rows``), one video per block up to NVDEC_MAX_BLOCKS blocks."""
        n = self.num_rows
        gpu = nvdec_rows(n, nvdec_share) if nvdec_share else np.zeros(n, bool)
        n_gpu = int(gpu.sum())
        cut = {CPU_LANE: _Cutter(block_sizes(n - n_gpu, blocks)),
               NVDEC_LANE: _Cutter(block_sizes(n_gpu, min(n_gpu, NVDEC_MAX_BLOCKS)))}
        done = 0
        for t in self.rows():
            g = gpu[done:done + t.num_rows]
            done += t.num_rows
            if g.any():
                yield from ((NVDEC_LANE, b) for b in cut[NVDEC_LANE].add(t.filter(pa.array(g))))
                t = t.filter(pa.array(~g))
            yield from ((CPU_LANE, b) for b in cut[CPU_LANE].add(t))
        for lane, c in cut.items():
            if not c.finished:
                raise RuntimeError(f"todo: {c.index} {lane} blocks cut, {len(c.sizes)} planned")


class _Cutter:
    """Consecutive rows in, blocks of the planned sizes out."""

    def __init__(self, sizes: np.ndarray):
        self.sizes, self.index, self.buf, self.held = sizes, 0, [], 0

    @property
    def finished(self) -> bool:
        return self.index == len(self.sizes)

    def add(self, t: pa.Table) -> Iterator[pa.Table]:
        while t.num_rows:
            take = t.slice(0, int(self.sizes[self.index]) - self.held)
            self.buf.append(take)
            self.held += take.num_rows
            t = t.slice(take.num_rows)
            if self.held == self.sizes[self.index]:
                yield pa.concat_tables(self.buf).combine_chunks()
                self.buf, self.held = [], 0
                self.index += 1
