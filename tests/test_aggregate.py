"""The writer's pure part: labeled rows (any order, some resent) -> finished videos with the
video-level top-k. No disk, no threads, no Ray."""
import numpy as np

from r2p1d_batch.runs.aggregate import VideoAssembler

LABELS = np.array([f"class{i}" for i in range(6)], dtype=object)


def _probs(i: int) -> list[float]:
    p = np.full(6, 0.02)
    p[i] = 0.9
    return p.tolist()


def clip(vid: str, index: int, top: int) -> dict:
    return {"kind": "clip", "video_id": vid, "clip_index": index, "probs": _probs(top),
            "weights": "random:seed=0", "runtime": "onnxruntime"}


def video(vid: str, n: int, status: str = "ok") -> dict:
    return {"kind": "video", "video_id": vid, "num_clips": n, "status": status,
            "error_class": "" if status == "ok" else "Truncated", "weights": "", "runtime": "", "label": None}


def test_a_video_finishes_when_its_row_and_all_its_clips_arrived_in_any_order():
    a = VideoAssembler(LABELS, k=2)
    assert a.add(clip("v", 2, 1)) == (None, True)
    assert a.add(video("v", 3))[0] is None
    assert a.add(clip("v", 0, 1))[0] is None
    assert a.pending == ["v"]
    finished, new = a.add(clip("v", 1, 3))
    assert new and a.pending == []
    assert [c["clip_index"] for c in finished.clips] == [0, 1, 2]
    v = finished.video
    assert v["num_clips"] == 3 and v["label"] == "class1" and v["topk_labels"] == ["class1", "class3"]
    # mean of the three softmaxes: class1 is 0.9 in two of them
    assert abs(v["score"] - (0.9 + 0.9 + 0.02) / 3) < 1e-6
    assert "probs" not in finished.clips[0]  # summed, not kept per clip
    assert a.model_info == ("random:seed=0", "onnxruntime")


def test_resent_rows_are_dropped_before_and_after_the_video_finished():
    a = VideoAssembler(LABELS, k=1)
    a.add(clip("v", 0, 2))
    assert a.add(clip("v", 0, 2)) == (None, False)  # a retried task resent it while pending
    finished, _ = a.add(video("v", 1))
    assert len(finished.clips) == 1 and finished.video["score"] > 0.89
    assert a.add(clip("v", 0, 2)) == (None, False) and a.add(video("v", 1)) == (None, False)
    assert a.duplicates_dropped == 2


def test_a_video_that_failed_half_way_keeps_no_clips_and_no_label():
    a = VideoAssembler(LABELS, k=1)
    a.add(clip("v", 0, 0))
    finished, _ = a.add(video("v", 1, status="error"))
    assert finished.clips == [] and finished.video["num_clips"] == 0 and finished.video["label"] is None
    assert a.pending == []
