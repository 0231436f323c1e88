"""Clip embeddings (output.embeddings=true): the pooled 512-d feature on both CPU runtimes, the
logits unchanged, the Arrow column, DuckDB's FLOAT[512], and the device graph left logits-only."""
from __future__ import annotations

import duckdb
import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from r2p1d_batch import config, schema
from r2p1d_batch.classifying.classifier import ClipClassifier
from r2p1d_batch.classifying.embeddings import WithEmbedding
from r2p1d_batch.classifying.export import OUTPUT_NAME, cached_export
from r2p1d_batch.classifying.model import Normalize, load_model
from r2p1d_batch.schema import embedding_array

pytestmark = pytest.mark.usefixtures("onnx_cache")  # conftest: exports into a fresh cache


@pytest.fixture(scope="module")
def clips():
    # Two random clips and one flat grey clip (a very different input).
    rng = np.random.default_rng(5)
    c = rng.integers(0, 256, (3, 16, 112, 112, 3), dtype=np.uint8)
    c[2] = 90
    return c


def _clf(runtime: str, embeddings: bool) -> ClipClassifier:
    cfg = config.load(None, ["model.weights=random", "model.seed=3", f"model.runtime={runtime}",
                             "model.device=cpu", "model.num_cpus=2"])
    return ClipClassifier(cfg.model, embeddings=embeddings)


@pytest.fixture(scope="module")
def torch_emb():
    return _clf("torch", True)


@pytest.fixture(scope="module")
def ort_emb():
    return _clf("onnxruntime", True)


@pytest.mark.slow
def test_wrapper_logits_equal_the_network_and_feature_is_fc_input():
    net = load_model("random", 3).module
    x = Normalize()(torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 16, 112, 112, 3), dtype=np.uint8)))
    with torch.inference_mode():
        ref = net(x)
        logits, emb = WithEmbedding(net)(x)
        captured = []
        h = net.fc.register_forward_hook(lambda m, i, o: captured.append(i[0]))
        net(x)
        h.remove()
    assert torch.equal(logits, ref)  # same ops: turning embeddings on changes no label
    feat = captured[0]
    assert emb.shape == (2, 512) and emb.dtype == torch.float32
    torch.testing.assert_close(emb, feat / feat.norm(dim=1, keepdim=True), rtol=0, atol=1e-6)


def test_onnxruntime_embedding_matches_torch_eager(ort_emb, torch_emb, clips):
    lo, eo = ort_emb.forward(clips)
    lt, et = torch_emb.forward(clips)
    assert eo.shape == et.shape == (3, 512) and eo.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(eo, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(et, axis=1), 1.0, atol=1e-5)
    cos = (eo * et).sum(1)
    assert cos.min() > 1 - 1e-6, cos
    assert float(np.abs(eo - et).max()) < 1e-5
    assert float(np.abs(lo - lt).max()) <= 1e-4
    # Different clips, different embeddings (the feature is not a constant).
    assert float(eo[0] @ eo[2]) < 0.999


@pytest.mark.slow
def test_embedding_graph_keeps_the_logits_of_the_logits_only_graph(ort_emb, clips):
    plain = _clf("onnxruntime", False)
    assert plain.forward(clips)[1] is None and plain(clips).embedding is None
    a, b = plain.logits(clips), ort_emb.logits(clips)
    assert float(np.abs(a - b).max()) <= 1e-6
    sa, sb = plain(clips), ort_emb(clips)
    assert np.array_equal(sa.topk_ids, sb.topk_ids) and sb.embedding.shape == (3, 512)


def test_device_graph_stays_logits_only(tmp_path):
    m = load_model("random", 0).module
    dev = onnx.load(str(cached_export(m, "random:seed=0", graph="device", root=tmp_path)))
    emb = onnx.load(str(cached_export(m, "random:seed=0", graph="uint8+embedding", root=tmp_path)))
    assert [o.name for o in dev.graph.output] == [OUTPUT_NAME]
    assert [o.name for o in emb.graph.output] == [OUTPUT_NAME, "embedding"]


def test_embedding_column_nulls_video_rows():
    rows = np.arange(2 * 512, dtype=np.float32).reshape(2, 512)
    col = embedding_array(rows, 4, np.array([0, 2]))
    assert col.type == schema.EMBEDDING[1] and col.null_count == 2
    assert col[0].as_py()[:2] == [0.0, 1.0] and col[1].as_py() is None and col[2].as_py()[0] == 512.0
    off = embedding_array(None, 3, np.array([0, 1]))
    assert off.null_count == 3


def test_classifier_actor_emits_embeddings_only_when_asked(clips):
    from r2p1d_batch.classifying.stage import ClassifierActor

    from tests.helpers.videos import decoded_table

    batch, px = decoded_table("cvc", 3)
    on = ClassifierActor(config.load(None, ["model.weights=random", "model.runtime=torch", "model.device=cpu",
                                            "output.embeddings=true"]))(batch)
    off = ClassifierActor(config.load(None, ["model.weights=random", "model.runtime=torch", "model.device=cpu"]))(batch)
    assert on.schema == off.schema == schema.LABELED
    e = on.column("embedding").to_pylist()
    assert e[1] is None and len(e[0]) == 512 and abs(np.linalg.norm(e[0]) - 1) < 1e-5
    assert off.column("embedding").null_count == 3
    assert on.column("label").to_pylist() == off.column("label").to_pylist()


def test_duckdb_reads_the_column_as_float_512_through_the_views(tmp_path):
    """The Parquet a run writes, read by query.connect: FLOAT[512], array_cosine_similarity as-is."""
    from r2p1d_batch import query

    rng = np.random.default_rng(0)
    e = rng.standard_normal((3, 512)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    n = 4
    cols = {f.name: pa.nulls(n, f.type) for f in schema.CLIPS}
    cols.update(video_id=pa.array(["a", "a", "b", "c"]), clip_index=pa.array([0, 1, 0, 0], pa.int32()),
                weights=pa.array(["w"] * n), embedding=embedding_array(e, n, np.array([0, 1, 2])))
    vcols = {f.name: pa.nulls(3, f.type) for f in schema.VIDEOS}
    vcols.update(video_id=pa.array(["a", "b", "c"]), status=pa.array(["ok"] * 3), weights=pa.array(["w"] * 3),
                 source_fingerprint=pa.array(["f"] * 3))
    for table, t in (("clips", pa.table(cols, schema=schema.CLIPS)), ("videos", pa.table(vcols, schema=schema.VIDEOS))):
        (tmp_path / table / "run_id=r1").mkdir(parents=True)
        pq.write_table(t, tmp_path / table / "run_id=r1" / "part-00000.parquet")
    (tmp_path / "_runs").mkdir()
    (tmp_path / "_runs" / "run_id=r1.json").write_text('{"run_id": "r1", "committed": true, "files": ['
                                                       '"clips/run_id=r1/part-00000.parquet", '
                                                       '"videos/run_id=r1/part-00000.parquet"]}')
    con = query.connect(str(tmp_path))
    types = dict(con.sql("SELECT column_name, column_type FROM (DESCRIBE clips)").fetchall())
    assert types["embedding"] == "FLOAT[512]"
    got = con.sql("SELECT video_id, clip_index, array_cosine_similarity(embedding, "
                  "(SELECT embedding FROM clips WHERE video_id = 'a' AND clip_index = 0)) FROM clips "
                  "ORDER BY video_id, clip_index").fetchall()
    assert got[0][2] == pytest.approx(1.0, abs=1e-6)
    assert got[1][2] == pytest.approx(float(e[0] @ e[1]), abs=1e-5) and got[3][2] is None
    assert duckdb.__version__  # the real DuckDB, not a stand-in
