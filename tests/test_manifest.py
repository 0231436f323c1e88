import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r2p1d_batch.planning.manifest import ManifestError, derive_video_id, read_manifest, validate


def test_minimal_manifest_derives_stable_ids():
    t = validate(pa.table({"uri": ["a.mp4", "b.mp4"]}))
    assert t.column("video_id").to_pylist() == [derive_video_id("a.mp4"), derive_video_id("b.mp4")]
    assert t.column("start_sec").null_count == 2
    assert derive_video_id("a.mp4") == validate(pa.table({"uri": ["a.mp4"]})).column("video_id")[0].as_py()


def test_extras_pass_through_and_types_normalise():
    t = validate(pa.table({"uri": ["a"], "video_id": [7], "start_sec": [1], "split": ["train"]}))
    assert t.column("video_id").to_pylist() == ["7"]
    assert t.schema.field("start_sec").type == pa.float64()
    assert t.column("split").to_pylist() == ["train"]


@pytest.mark.parametrize(
    "table, needle",
    [
        (pa.table({"path": ["a"]}), "required column 'uri' is missing (columns: path)"),
        (pa.table({"uri": ["a", None]}), "'uri' is null or empty in rows 1"),
        (pa.table({"uri": ["a", "  "]}), "'uri' is null or empty in rows 1"),
        (pa.table({"uri": ["a", "a"]}), "duplicate uri (no video_id column)"),
        (pa.table({"uri": ["a", "b"], "video_id": ["x", "x"]}), "duplicate video_id values: ['x']"),
        (pa.table({"uri": ["a"], "video_id": [None]},
                  schema=pa.schema([("uri", pa.string()), ("video_id", pa.string())])), "'video_id' is null"),
        (pa.table({"uri": ["a"], "label": ["x"]}), "reserved"),
        (pa.table({"uri": ["a"], "start_sec": [5.0], "end_sec": [2.0]}), "start_sec >= end_sec in rows 0"),
        (pa.table({"uri": ["a"], "start_sec": [-1.0]}), "start_sec < 0"),
        (pa.table({"uri": ["a"], "start_sec": ["soon"]}), "column 'start_sec' has type string"),
        (pa.table({"uri": pa.array([], pa.string())}), "has no rows"),
    ],
)
def test_bad_manifests_fail_before_work(table, needle):
    with pytest.raises(ManifestError) as e:
        validate(table)
    assert needle in str(e.value)


def test_read_manifest_errors(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(str(tmp_path / "nope.parquet"))
    bad = tmp_path / "bad.parquet"
    bad.write_text("csv,not,parquet")
    with pytest.raises(ManifestError, match="not a readable Parquet"):
        read_manifest(str(bad))
    good = tmp_path / "m.parquet"
    pq.write_table(pa.table({"uri": ["x.mp4"]}), good)
    assert read_manifest(str(good)).num_rows == 1
