"""The pure part of finishing videos: per-file, per-video clip sums (any order, over any number
of files) -> finished videos with the video-level top-k. No disk, no threads, no Ray."""
import numpy as np
import pytest

from r2p1d_batch.runs.aggregate import (
    VideoAggregator,
    VideoClips,
    VideoRows,
    WriteConflict,
    has_repeat,
    video_topk,
)

LABELS = np.array([f"class{i}" for i in range(6)], dtype=object)


def _probs(i: int) -> np.ndarray:
    p = np.full(6, 0.02)
    p[i] = 0.9
    return p


def clips(file: str, **videos: list[tuple[int, int]]) -> VideoClips:
    """One file's clips: video id -> [(clip index, top class)], as the writer stage reports them."""
    ids, offsets, indices, sums = [], [0], [], []
    for vid, cl in videos.items():
        cl = sorted(cl)
        ids.append(vid)
        indices += [i for i, _ in cl]
        offsets.append(len(indices))
        sums.append(np.sum([_probs(top) for _, top in cl], axis=0))
    return VideoClips(file, ids, np.array(offsets), np.array(indices, np.int32), np.array(sums))


def rows(*videos: tuple[str, int, bool]) -> VideoRows:
    """Video rows: (video id, num_clips, ok)."""
    return VideoRows([v for v, _, _ in videos], np.array([n for _, n, _ in videos]),
                     np.array([ok for _, _, ok in videos]), [f"row-{v}" for v, _, _ in videos])


def test_a_video_finishes_when_its_row_and_all_its_clips_arrived_in_any_order_and_files():
    a = VideoAggregator()
    assert len(a.add(clips("f1", v=[(2, 1)]), None)) == 0
    assert len(a.add(None, rows(("v", 3, True)))) == 0
    assert a.pending == ["v"]
    done = a.add(clips("f2", v=[(0, 1), (1, 3)]), None)
    assert a.pending == [] and done.video_ids == ["v"] and done.rows == ["row-v"] and done.clips == [3]
    top = video_topk(LABELS, 2, np.concatenate(done.means))
    assert top["label"].to_pylist() == ["class1"] and top["topk_labels"].to_pylist() == [["class1", "class3"]]
    # mean of the three softmaxes: class1 is 0.9 in two of them
    assert abs(top["score"][0].as_py() - (0.9 + 0.9 + 0.02) / 3) < 1e-6


def test_video_topk_is_the_classifiers_topk_ties_included():
    """scores.topk (k argmax passes), which video_topk runs, gives a stable argsort's ids and
    scores: best first, ties to the lower id, also where the k-th value is shared."""
    from r2p1d_batch.classifying.scores import topk

    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(400), 300).astype(np.float32)
    p[0, [3, 7, 9, 200, 300, 399]] = 0.5  # a tie across the top-5 boundary
    p[1] = 1 / 400  # all equal
    p[2, :10] = p[2, 10]  # ties inside the top-5
    for k in (1, 5, 400):
        ids, scores = topk(p, k)
        ref_ids = np.argsort(-p, axis=1, kind="stable")[:, :k]
        ref_scores = np.take_along_axis(p, ref_ids, axis=1)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_array_equal(scores, ref_scores)
    top = video_topk(np.array([f"c{i}" for i in range(400)], dtype=object), 5, p[:2].astype(np.float64))
    assert top["topk_labels"].to_pylist()[0] == ["c3", "c7", "c9", "c200", "c300"]
    assert top["label"].type == "string" and top["topk_scores"].type.value_type == "float"


def test_a_video_that_failed_half_way_keeps_no_clips_and_names_the_files_to_purge():
    a = VideoAggregator()
    a.add(clips("f1", v=[(0, 0)], w=[(0, 1)]), None)
    done = a.add(clips("f2", v=[(1, 0)]), rows(("v", 2, False), ("w", 1, True), ("x", 0, False)))
    assert sorted(zip(done.video_ids, done.ok, done.clips)) == [("v", False, 0), ("w", True, 1), ("x", False, 0)]
    assert {f: sorted(v) for f, v in done.purge.items()} == {"f1": ["v"], "f2": ["v"]}
    assert len(np.concatenate(done.means)) == 1  # w only


def test_clips_reported_twice_are_a_conflict_not_a_duplicate():
    """A report delivered twice is dropped by file name before it gets here (runs/writer.py);
    clips of one video in two files, or twice in one, stop the run, naming video and files."""
    a = VideoAggregator()
    a.add(clips("f1", v=[(0, 0), (1, 0)]), None)
    a.add(clips("f2", v=[(1, 0), (2, 0)]), None)
    with pytest.raises(WriteConflict, match=r"video v: clips reported twice by f1, f2"):
        a.add(None, rows(("v", 4, True)))  # 4 clips arrived, 3 distinct
    with pytest.raises(WriteConflict, match=r"video v: 2 clips reported by f3, its row says 1"):
        VideoAggregator().add(clips("f3", v=[(0, 0), (0, 0)]), rows(("v", 1, True)))
    with pytest.raises(WriteConflict, match=r"video v: clips reported twice by f4"):
        VideoAggregator().add(clips("f4", v=[(0, 0), (0, 0)]), rows(("v", 2, True)))
    b = VideoAggregator()
    b.add(None, rows(("v", 2, True)))
    with pytest.raises(WriteConflict, match=r"video v: its video row arrived twice"):
        b.add(None, rows(("v", 2, True)))
    c = VideoAggregator()  # a writer task finished v whole while clips of v from f5 are pending
    c.add(clips("f5", v=[(0, 0)]), None)
    c.check_whole(["u"])
    with pytest.raises(WriteConflict, match=r"video v: whole in one part file and also reported by f5"):
        c.check_whole(["u", "v"])


def test_has_repeat_finds_a_repeat_inside_a_segment_only():
    offsets = np.array([0, 2, 4, 5])
    assert has_repeat(offsets, np.array([0, 1, 1, 2, 2])).tolist() == [False, False, False]
    assert has_repeat(offsets, np.array([0, 0, 1, 1, 2])).tolist() == [True, True, False]
