"""The rows to label on their way to Ray Data: the NVDEC lane split, the decode input blocks cut
from the manifest's files (extras included), and the blocks Ray gets (one Ray test)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r2p1d_batch.decoding.lanes import nvdec_rows, split_rows
from r2p1d_batch.planning import sizing
from r2p1d_batch.planning.manifest import read_manifest
from r2p1d_batch.planning.todo import CPU_LANE, NVDEC_LANE, Todo, block_sizes


def test_nvdec_rows_is_the_running_total_split():
    def loop(n, share):  # the dict-by-dict split it replaced
        acc, out = 0.0, []
        for _ in range(n):
            acc += share
            out.append(acc >= 1.0 - 1e-9)
            acc -= out[-1]
        return out

    for share in (0.0, 0.05, 0.1, 0.25, 0.3, 1 / 3, 0.5, 0.55, 2 / 3, 0.7, 0.9, 0.999, 1.0):
        assert nvdec_rows(50_000, share).tolist() == loop(50_000, share), share
    assert [r for r in split_rows(list(range(10)), 0.5)[1]] == [1, 3, 5, 7, 9]


def test_todo_blocks_have_the_planned_sizes_and_carry_the_extras(tmp_path):
    n = 1000
    pq.write_table(pa.table({"uri": [f"/v/{i}.mp4" for i in range(n)], "camera": [f"c{i % 7}" for i in range(n)],
                             "start_sec": [float(i % 3) for i in range(n)]}), tmp_path / "m.parquet",
                   row_group_size=128)
    m = read_manifest(str(tmp_path / "m.parquet"))
    mask = np.ones(n, bool)
    mask[::10] = False  # 900 rows to label
    todo = Todo(m, mask)
    planned = sizing.decode_blocks(todo.num_rows, 1)
    blocks = list(todo.blocks(planned))
    assert [lane for lane, _ in blocks] == [CPU_LANE] * planned
    assert [b.num_rows for _, b in blocks] == block_sizes(900, planned).tolist()
    assert max(b.num_rows for _, b in blocks) <= sizing.ROWS_PER_BLOCK_MAX
    rows = pa.concat_tables([b for _, b in blocks])
    assert rows.equals(m.table(mask)) and rows.column_names == ["video_id", "uri", "start_sec", "end_sec", "camera"]
    lanes = list(todo.blocks(planned, nvdec_share=0.3))
    gpu = [b for lane, b in lanes if lane == NVDEC_LANE]
    assert len(gpu) == 270 and all(b.num_rows == 1 for b in gpu)
    assert pa.concat_tables(gpu).column("video_id").to_pylist() == [
        v for v, g in zip(rows.column("video_id").to_pylist(), nvdec_rows(900, 0.3)) if g]
    assert sum(b.num_rows for lane, b in lanes if lane == CPU_LANE) == 630
    assert list(Todo(m, np.zeros(n, bool)).blocks(planned)) == []


@pytest.mark.ray
def test_ray_gets_exactly_the_planned_blocks(ray_local, tmp_path):
    from r2p1d_batch.pipeline import todo_datasets

    pq.write_table(pa.table({"uri": [f"/v/{i}.mp4" for i in range(1000)], "camera": ["a"] * 1000}),
                   tmp_path / "m.parquet")
    todo = Todo(read_manifest(str(tmp_path / "m.parquet")), np.ones(1000, bool))
    for slots in (1, 4):
        planned = sizing.decode_blocks(1000, slots)  # 16 (64 rows each), then 32 (8 per slot)
        lanes = todo_datasets(todo, planned)
        assert set(lanes) == {CPU_LANE}
        ds = lanes[CPU_LANE]
        assert ds.num_blocks() == planned
        sizes = [len(b) for b in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0)]
        assert sizes == block_sizes(1000, planned).tolist()
    lanes = todo_datasets(todo, 16, nvdec_share=0.5)
    assert lanes[NVDEC_LANE].num_blocks() == 500 and lanes[CPU_LANE].num_blocks() == 16
    assert lanes[CPU_LANE].take(1)[0]["camera"] == "a"  # the extras ride along
