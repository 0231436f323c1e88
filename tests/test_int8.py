"""The int8 CPU graph: agreement arithmetic, `r2p1d quantize` on a real (small) manifest, the
driver's refusals (exit 2, one error line, nothing written), an s3:// graph directory on moto,
and a label run on the graph. One graph is built per test session, shared by the xdist workers
(minmax on a few clips, ~20 s)."""
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from filelock import FileLock

from r2p1d_batch import config
from r2p1d_batch.classifying import int8
from r2p1d_batch.classifying.classifier import ClipClassifier
from r2p1d_batch.cli import main
from r2p1d_batch.decoding.stage import decode_video
from r2p1d_batch.pipeline import check_int8, label
from r2p1d_batch.quantizing import quantize, spread

from tests.helpers.videos import make_video

SMALL = ["model.weights=random", "quantize.method=minmax", "quantize.calibration_clips=2",
         "quantize.holdout_clips=4", "quantize.clips_per_video=2"]


def test_agreement_of_identical_outputs_is_perfect_and_a_perturbation_misses_by_name():
    rng = np.random.default_rng(0)
    logits, emb = rng.normal(size=(20, 400)) * 5, rng.normal(size=(20, 512))
    same = int8.agreement(logits, emb, logits, emb)
    assert same.top1 == same.top5_overlap == 1.0 and same.clips == 20
    assert same.logits_cosine == pytest.approx(1.0) and same.max_abs_dsoftmax == 0.0
    budget = {"min_top1": 0.98, "min_logits_cosine": 0.999, "min_embedding_cosine": 0.99}
    assert int8.missed(same, budget) == []
    noisy = int8.agreement(logits, emb, logits + rng.normal(size=logits.shape) * 3, emb)
    assert noisy.top1 < 0.98 and noisy.logits_cosine < 0.999 and noisy.embedding_cosine == pytest.approx(1.0)
    short = int8.missed(noisy, budget)
    assert [s.split(" 0")[0] for s in short] == ["top-1 agreement", "logits cosine"]


def test_spread_takes_evenly_from_a_video():
    assert spread(3, 5).tolist() == [0, 1, 2]
    assert spread(30, 4).tolist() == [0, 10, 19, 29]


def _shared_dir(tmp_path_factory, worker_id: str):
    """A directory the xdist workers of this session share (the graph is built once, not per worker)."""
    base = tmp_path_factory.getbasetemp()
    return base if worker_id == "master" else base.parent


@pytest.fixture(scope="module")
def corpus_and_graph(tmp_path_factory, worker_id):
    d = _shared_dir(tmp_path_factory, worker_id) / "int8-corpus"
    with FileLock(f"{d}.lock"):
        if not (d / "built.json").exists():
            d.mkdir(exist_ok=True)
            uris = [str(make_video(d / f"v{i}.mp4", n_frames=40, fps=15, pattern="noise", seed=i)) for i in range(4)]
            pq.write_table(pa.table({"uri": uris + [str(d / "missing.mp4")]}), d / "m.parquet")
            cfg = config.load(None, SMALL, manifest=str(d / "m.parquet"))
            built = quantize(cfg, str(d / "graph"), threads=2)
            # what quantize returned, beside the report it wrote (the first test compares them)
            (d / "built.json").write_text(json.dumps({"report": built.report, "passed": built.passed}))
    returned = json.loads((d / "built.json").read_text())
    return d, SimpleNamespace(report=returned["report"], passed=returned["passed"])


@pytest.fixture(scope="module")
def corpus(corpus_and_graph):
    return corpus_and_graph[0]


@pytest.fixture(scope="module")
def graph(corpus_and_graph):
    d, built = corpus_and_graph
    return d / "graph", built


def test_quantize_writes_the_graph_and_a_report_from_the_manifests_own_clips(graph):
    path, built = graph
    report = json.loads((path / int8.REPORT_FILE).read_text())
    assert report == built.report and built.passed and report["passed"] and report["missed"] == []
    assert report["weights"] == "random:seed=0" and report["random_weights"] and "says nothing" in report["note"]
    assert report["graph_sha256"] == int8.sha256_file(path / int8.GRAPH_FILE)
    assert report["calibration"]["clips"] == 2 and report["holdout"]["clips"] == 4
    # Split by video: the calibration and held-out clips come from different videos.
    assert report["calibration"]["videos"] == 1 and report["holdout"]["videos"] == 2
    assert not report["holdout"]["shares_videos_with_calibration"]
    assert report["quantization"] == {"format": "QDQ", "weights": "int8", "activations": "uint8", "method": "minmax",
                                      "per_channel": True, "reduce_range": False, "fp32_nodes": ["/net/fc/Gemm"]}
    assert report["onnxruntime"] and "isa" in report["cpu"]
    a = report["agreement"]
    assert a["clips"] == 4 and a["logits_cosine"] > 0.99 and a["embedding_cosine"] > 0.99
    assert int8.runtime_id(report) == f"onnxruntime-cpu-int8[minmax,2clips,per-channel@{report['graph_sha256'][:8]}]"


def test_the_int8_graph_follows_fp32_with_embeddings(graph, corpus):
    path, built = graph
    cfg = config.load(None, ["model.weights=random", "model.device=cpu", f"model.int8={path}"])
    # Clips of the manifest's kind (uniform random pixels fall outside the calibrated ranges).
    rows = decode_video({"video_id": "v3", "uri": str(corpus / "v3.mp4")}, cfg)
    clips = np.stack([np.frombuffer(r["frames"], np.uint8).reshape(16, 112, 112, 3)
                      for r in rows if r["kind"] == "clip"])
    mine = ClipClassifier(cfg.model, embeddings=True, weights_id="random:seed=0")
    ref = ClipClassifier(config.load(None, ["model.weights=random", "model.device=cpu"]).model, embeddings=True)
    assert mine.runtime == int8.runtime_id(built.report) and mine.weights_id == ref.weights_id
    (lq, eq), (lf, ef) = mine.forward(clips), ref.forward(clips)
    a = int8.agreement(lf, ef, lq, eq)
    assert a.logits_cosine > 0.99 and a.embedding_cosine > 0.99 and eq.shape == (len(clips), 512)


def _label_exit(capsys, manifest, out, *sets) -> tuple[int, str]:
    code = main(["label", str(manifest), "-o", str(out), *(a for s in sets for a in ("--set", s))])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing", "failed", "other_weights", "changed_graph", "gpu"])
def test_label_refuses_a_graph_it_must_not_use(graph, corpus, tmp_path, capsys, case):
    path, _ = graph
    bad = tmp_path / "graph"
    shutil.copytree(path, bad)
    report = json.loads((bad / int8.REPORT_FILE).read_text())
    sets = ["model.weights=random", f"model.int8={bad}"]
    if case == "missing":
        (bad / int8.REPORT_FILE).unlink()
    elif case == "failed":
        report.update(passed=False, missed=["top-1 agreement 0.9000 < 0.98"])
    elif case == "other_weights":
        sets[0] = "model.seed=3"
        sets.append("model.weights=random")
    elif case == "changed_graph":
        with open(bad / int8.GRAPH_FILE, "ab") as f:
            f.write(b"\0")
    elif case == "gpu":
        sets.append("model.num_gpus=1")
    if case != "missing":
        (bad / int8.REPORT_FILE).write_text(json.dumps(report))
    code, err = _label_exit(capsys, corpus / "m.parquet", tmp_path / "out", *sets)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: model.int8="), err
    expect = {"missing": "no report.json", "failed": "missed its agreement budget", "other_weights": "random:seed=3",
              "changed_graph": "not the graph its report measured", "gpu": "runs on CPU actors"}[case]
    assert expect in lines[0]
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_an_s3_graph_directory_is_checked_and_fetched_once_by_sha(graph, s3_env, tmp_path):
    path, built = graph
    bucket = s3_env.bucket("int8")
    for name in (int8.GRAPH_FILE, int8.REPORT_FILE):
        s3_env.put(bucket, f"graphs/a/{name}", path / name)
    report = check_int8(config.load(None, ["model.weights=random", "model.int8=s3://int8/graphs/a"]), "random:seed=0")
    assert report == built.report
    local = int8.local_graph("s3://int8/graphs/a", report, root=tmp_path)
    assert local.name == f"int8-{report['graph_sha256'][:16]}.onnx"
    assert int8.sha256_file(local) == report["graph_sha256"]
    s3_env.put(bucket, "graphs/a/" + int8.GRAPH_FILE, b"not the graph")
    with pytest.raises(int8.Int8Error, match="not the graph its report measured"):
        int8.check("s3://int8/graphs/a", "random:seed=0")
    assert int8.local_graph("s3://int8/graphs/a", report, root=tmp_path) == local  # the verified copy, not refetched


@pytest.mark.slow
def test_quantize_exits_1_naming_what_missed_the_budget(corpus, tmp_path, capsys):
    code = main(["quantize", str(corpus / "m.parquet"), "-o", str(tmp_path / "g"), *(
        a for s in [*SMALL, "quantize.min_logits_cosine=1.0"] for a in ("--set", s))])
    out = capsys.readouterr().out
    assert code == 1 and "MISSED the budget: logits cosine" in out
    report = json.loads((tmp_path / "g" / int8.REPORT_FILE).read_text())
    assert not report["passed"] and report["missed"][0].startswith("logits cosine")
    with pytest.raises(int8.Int8Error, match="missed its agreement budget"):
        int8.check(str(tmp_path / "g"), "random:seed=0")


@pytest.mark.ray
@pytest.mark.slow
def test_a_label_run_on_the_int8_graph_says_so_in_every_row_and_the_summary(graph, corpus, ray_local, tmp_path):
    import duckdb

    path, built = graph
    cfg = config.load(None, ["model.weights=random", f"model.int8={path}", "output.embeddings=true",
                             "model.batch_size=4", "ray.progress_bars=false"],
                      manifest=str(corpus / "m.parquet"), **{"output.path": str(tmp_path / "out")})
    summary = label(cfg)
    runtime = int8.runtime_id(built.report)
    assert summary.committed and summary.videos_ok == 4 and summary.videos_error == 1
    assert summary.runtime == runtime and summary.int8["graph_sha256"] == built.report["graph_sha256"]
    assert "MEANINGLESS: random weights" in summary.text()
    rows = duckdb.sql(f"SELECT DISTINCT runtime, embedding IS NULL FROM read_parquet('{tmp_path}/out/clips/*.parquet')"
                      ).fetchall()
    assert rows == [(runtime, False)]
    videos = duckdb.sql(f"SELECT DISTINCT runtime FROM read_parquet('{tmp_path}/out/videos/*.parquet')").fetchall()
    assert videos == [(runtime,)]  # the error row too: the driver's planned runtime
