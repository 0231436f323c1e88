"""The classifier stage's batch handling, without Ray: clip pixels out of a decoded Arrow batch
(clip rows mixed with video rows, several chunks, slices) and scores back on the right rows."""
import numpy as np
import pyarrow as pa
import pytest

from r2p1d_batch import config, schema
from r2p1d_batch.classifying.stage import ClassifierActor, clip_pixels

from tests.helpers.videos import decoded_table

SHAPE = (16, 112, 112, 3)


def test_clip_pixels_are_the_clip_rows_in_order_across_chunks_and_slices():
    a, ca = decoded_table("ccvc", 1)
    b, cb = decoded_table("vcc", 2)
    table = pa.concat_tables([a, b])
    assert table.column("frames").num_chunks == 2
    got = clip_pixels(table.column("frames"), SHAPE)
    assert got.shape == (5, *SHAPE) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, np.stack(ca + cb))
    sliced = table.slice(2, 4)  # v c | v c: an offset into the first chunk
    np.testing.assert_array_equal(clip_pixels(sliced.column("frames"), SHAPE), np.stack([ca[2], cb[0]]))
    assert clip_pixels(a.slice(2, 1).column("frames"), SHAPE).shape == (0, *SHAPE)


def test_clip_pixels_of_a_single_chunk_are_a_view_not_a_copy():
    t, _ = decoded_table("cvc")
    frames = t.column("frames").chunk(0)
    got = clip_pixels(frames, SHAPE)
    assert not got.flags.owndata and got.ctypes.data == frames.buffers()[2].address


def test_clip_pixels_names_the_row_of_a_clip_with_the_wrong_size():
    t, _ = decoded_table("cc")
    bad = t.set_column(t.schema.get_field_index("frames"), "frames",
                       pa.array([t.column("frames")[0].as_py(), b"\x00" * 10], pa.binary()))
    with pytest.raises(ValueError, match=r"row 1: clip of 10 bytes"):
        clip_pixels(bad.column("frames"), SHAPE)


@pytest.mark.slow
def test_classifier_actor_scores_clip_rows_and_passes_video_rows():
    cfg = config.load(None, ["model.weights=random", "model.runtime=torch", "model.device=cpu"])
    actor = ClassifierActor(cfg)
    a, ca = decoded_table("cvc", 3)
    b, cb = decoded_table("c", 4)
    out = actor(pa.concat_tables([a, b]))
    assert out.schema == schema.LABELED
    kinds, labels = out.column("kind").to_pylist(), out.column("label_id").to_pylist()
    assert [lbl is None for lbl in labels] == [k == "video" for k in kinds]
    ref = actor.classifier(np.stack(ca + cb))
    assert [x for x in labels if x is not None] == ref.topk_ids[:, 0].tolist()
