"""bench/driver.py: the write path's cost per clip, through the real writer stage and driver
code, on a small input (the figures themselves are in docs/bench.md)."""
from r2p1d_batch.bench.driver import _video_order, driver_rows


def test_decode_blocks_interleave_and_every_row_comes_once():
    order = _video_order(6, 3)
    assert sorted(order) == sorted((v, i) for v in range(6) for i in (-1, 0, 1, 2))
    assert order[:4] == [(0, 0), (0, 1), (0, 2), (0, -1)]  # a video's row right after its clips
    assert order[8] == (1, 0)  # then the next stream's block


def test_driver_rows_measure_the_real_write_path():
    rows, notes = driver_rows(clips=600, clips_per_video=(1, 6), repeats=1)
    assert [(r["clips_per_video"], r["embeddings"], r["extras"]) for r in rows] == [
        (1, False, False), (6, False, False), (1, True, False), (6, True, False), (1, False, True)]
    for r in rows:
        assert r["clips"] == 600 and r["part_files"] == 1 and r["driver_us_per_clip"] > 0
        assert r["worker_us_per_clip"] > 0 and r["most_pending_videos"] == 0
    assert notes
