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


# -- sharded manifests: a directory or a glob of Parquet files -----------------------------------
def _shards(d, parts: list[dict], **kw) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for i, cols in enumerate(parts):
        pq.write_table(pa.table(cols, **kw), d / f"part-{i:05d}.parquet")


def test_a_directory_or_glob_reads_like_one_file(tmp_path):
    rows = [{"uri": [f"s3://b/{i}-{j}.mp4" for j in range(3)], "split": ["train", "val", "test"]} for i in range(3)]
    _shards(tmp_path / "m", rows)
    (tmp_path / "m" / "_SUCCESS").write_text("")  # hidden files are not shards (Spark, Hive)
    one = validate(pa.concat_tables([pa.table(r) for r in rows]))
    for uri in (str(tmp_path / "m"), str(tmp_path / "m" / "part-*.parquet"), f"file://{tmp_path}/m/"):
        m = read_manifest(uri)
        assert len(m.files) == 3 and m.num_rows == 9 and m.extras == ["split"]
        assert m.column("video_id").to_pylist() == one.column("video_id").to_pylist()
        assert m.table().equals(one)  # extras come back from the files, types kept
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(str(tmp_path / "m" / "nothing-*.parquet"))


def test_sharded_errors_name_rows_and_files(tmp_path):
    ok = {"uri": ["a", "b", "c", "d"], "start_sec": [0.0, 1.0, 2.0, 3.0], "end_sec": [1.0, 2.0, 3.0, 4.0]}
    bad = {"uri": ["e", "f", "g", "h", "i", "j", "k", "l"], "start_sec": [0.0, 1.0, 2.0, 9.0, 0.0, 0.0, 0.0, 5.0],
           "end_sec": [1.0, 2.0, 3.0, 1.0, 1.0, 1.0, 1.0, 1.0]}
    _shards(tmp_path / "m", [ok, ok | {"uri": ["a2", "b2", "c2", "d2"]}, bad])
    with pytest.raises(ManifestError) as e:
        read_manifest(str(tmp_path / "m"))
    assert str(e.value).endswith("start_sec >= end_sec in rows 3, 7 of part-00002.parquet")
    nulls = {"uri": pa.array(["x", None, "y", " "], pa.string())}
    _shards(tmp_path / "n", [nulls, {"uri": pa.array([None, "z"], pa.string())}])
    with pytest.raises(ManifestError, match=r"'uri' is null or empty in rows 1, 3 of part-00000.parquet, "
                                            r"0 of part-00001.parquet$"):
        read_manifest(str(tmp_path / "n"))
    _shards(tmp_path / "d", [{"uri": ["a", "b"]}, {"uri": ["c", "a"]}])
    with pytest.raises(ManifestError, match=r"duplicate uri \(no video_id column\) values: \['v"):
        read_manifest(str(tmp_path / "d"))


def test_shards_whose_columns_differ_are_named(tmp_path):
    _shards(tmp_path / "m", [{"uri": ["a"], "split": ["x"]}, {"uri": ["b"], "split": ["y"]}])
    pq.write_table(pa.table({"uri": ["c"], "camera": ["z"]}), tmp_path / "m" / "part-00002.parquet")
    with pytest.raises(ManifestError, match=r"part-00002.parquet has columns \['camera', 'uri'\] but "
                                            r"part-00000.parquet has \['split', 'uri'\]"):
        read_manifest(str(tmp_path / "m"))
    _shards(tmp_path / "t", [{"uri": ["a"], "video_id": ["x"]}, {"uri": ["b"], "video_id": [7]}])
    with pytest.raises(ManifestError, match="column 'video_id' is int64 in part-00001.parquet but string"):
        read_manifest(str(tmp_path / "t"))
    (tmp_path / "c").mkdir()
    pq.write_table(pa.table({"uri": ["a"]}), tmp_path / "c" / "a.parquet")
    (tmp_path / "c" / "b.parquet").write_text("not parquet")
    with pytest.raises(ManifestError, match=r"c: b.parquet is not a readable Parquet file"):
        read_manifest(str(tmp_path / "c"))


def test_derived_ids_are_sha1_of_the_utf8_uri(tmp_path):
    uris = ["a.mp4", "s3://b/ünïcödé 视频.mp4", "/x/y z/€.mp4", "e\u0301", "🎞️" * 40]
    t = validate(pa.table({"uri": uris}))
    assert t.column("video_id").to_pylist() == [derive_video_id(u) for u in uris]


def test_read_returns_only_the_selected_rows_and_reads_only_their_row_groups(tmp_path):
    import numpy as np

    n = 1000
    t = pa.table({"uri": [f"/v/{i}.mp4" for i in range(n)], "video_id": [f"id{i}" for i in range(n)],
                  "rank": pa.array(range(n), pa.int16()), "tags": [[str(i)] for i in range(n)]})
    pq.write_table(t, tmp_path / "m.parquet", row_group_size=100)
    m = read_manifest(str(tmp_path / "m.parquet"))
    assert m.extras == ["rank", "tags"] and m.schema.field("rank").type == pa.int16()
    mask = np.zeros(n, bool)
    mask[[5, 6, 950]] = True
    got = m.table(mask)
    assert got.column("video_id").to_pylist() == ["id5", "id6", "id950"]
    assert got.column("tags").to_pylist() == [["5"], ["6"], ["950"]] and got.schema == m.schema
    assert sum(1 for _ in m.read(mask)) == 2  # two row groups of ten read


def test_a_sharded_manifest_on_s3(s3_env, tmp_path):
    s3_env.bucket("shards")
    for i in range(3):
        local = tmp_path / f"part-{i}.parquet"
        pq.write_table(pa.table({"uri": [f"s3://v/{i}-{j}.mp4" for j in range(2)], "camera": [f"c{i}"] * 2}), local)
        s3_env.put("shards", f"m/day=1/part-{i}.parquet", local)
    s3_env.put("shards", "m/_SUCCESS", b"")
    for uri, first in (("s3://shards/m", "day=1/part-0.parquet"), ("s3://shards/m/day=1/*.parquet", "part-0.parquet")):
        m = read_manifest(uri)
        assert (m.num_rows, m.names[0], m.extras) == (6, first, ["camera"])
        assert m.table().column("camera").to_pylist() == ["c0", "c0", "c1", "c1", "c2", "c2"]
