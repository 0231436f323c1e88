"""The driver's plan at scale, without Ray: fingerprints from listings (local stats, S3
ListObjectsV2 on moto with its requests counted) and the vectorised selection against the
dict-per-row specification."""
from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from r2p1d_batch import config as config_mod
from r2p1d_batch import schema
from r2p1d_batch.decoding.stage import decode_video
from r2p1d_batch.runs import incremental
from r2p1d_batch.runs.fingerprints import fingerprints
from r2p1d_batch.storage import filesystem, fingerprint

from tests.helpers.videos import make_video


def _info_fp(uri: str, storage=None):
    """What the decode stage records: storage.fingerprint(fs.info(path)), or None."""
    try:
        fs, path = filesystem(uri, storage)
        return fingerprint(fs.info(path))
    except Exception:
        return None


# -- local files ---------------------------------------------------------------------------------
def test_local_fingerprints_are_the_decode_stages_byte_for_byte(tmp_path, monkeypatch):
    d = tmp_path / "d"
    d.mkdir()
    paths = []
    for i in range(6):
        p = d / f"f{i}.mp4"
        p.write_bytes(b"x" * i)
        paths.append(p)
    os.utime(paths[0], (0, 0))  # mtime 0.0: fs.info's dict makes that "None"
    os.utime(paths[1], (1_700_000_000, 1_700_000_000))  # whole seconds: "1700000000.0"
    os.utime(paths[2], ns=(1, 1_700_000_000_123_456_789))
    os.utime(paths[3], (12345.5, 12345.5))  # far past: still Python's repr
    (d / "link.mp4").symlink_to(paths[4])
    (d / "broken.mp4").symlink_to(d / "nope")
    monkeypatch.chdir(d)
    uris = [str(p) for p in paths] + [str(d / "link.mp4"), str(d / "broken.mp4"), "f3.mp4", "./f4.mp4",
                                      f"file://{paths[1]}", f"local://{paths[2]}", str(d / "missing.mp4"),
                                      str(d), str(d) + "/", "~/no-such-file.mp4"]
    assert fingerprints(pa.array(uris)).to_pylist() == [_info_fp(u) for u in uris]
    assert fingerprints(pa.array(["", None], pa.string())).to_pylist() == [None, None]  # a hook's empty target
    video = make_video(tmp_path / "v.mp4", n_frames=20, fps=15, size=(64, 48))
    row = {"video_id": "v", "uri": str(video), "start_sec": None, "end_sec": None}
    decoded = [r for r in decode_video(row, config_mod.load(None, [])) if r["kind"] == "video"][0]
    assert fingerprints(pa.array([str(video)])).to_pylist() == [decoded["source_fingerprint"]]


# -- S3: a listing per 1,000 keys, not a HEAD per object -----------------------------------------------
def _s3_rows(n: int, prefixes: int) -> dict[str, bytes]:
    return {f"videos/p{i % prefixes}/clip-{i:06d}.mp4": b"x" * (1 + i % 7) for i in range(n)}


def test_s3_plan_costs_one_request_per_1000_objects(s3_env, s3_proxy):
    s3_env.bucket("fleet")
    objects = _s3_rows(10_000, 4)
    s3_env.put_many("fleet", objects)
    keys = list(objects)
    random.Random(0).shuffle(keys)  # manifest order is not listing order
    uris = [f"s3://fleet/{k}" for k in keys] + ["s3://fleet/videos/p1/missing.mp4", "s3a://fleet/videos/p2/clip-000002.mp4"]
    storage = config_mod.StorageConfig(endpoint_url=s3_proxy.endpoint)
    t0 = time.perf_counter()
    got = fingerprints(pa.array(uris), storage).to_pylist()
    took = time.perf_counter() - t0
    requests = list(s3_proxy.request_lines)
    assert len(requests) <= len(objects) // 500, requests[:5]  # measured: 12 (3 pages per prefix)
    assert all(" /fleet?list-type=2" in r for r in requests), requests[:5]
    assert got[-2] is None and got[-1] == got[keys.index("videos/p2/clip-000002.mp4")]
    sample = random.Random(1).sample(range(len(keys)), 40)  # the decode stage's view: fs.info (a HEAD)
    assert [got[i] for i in sample] == [_info_fp(uris[i], storage) for i in sample]
    assert all(g.startswith("etag:") and '"' not in g for g in got[:-2])
    print(f"10,000 objects: {len(requests)} requests, {took:.2f} s")


def test_a_few_rows_under_a_huge_prefix_do_not_list_it_all(s3_env, s3_proxy):
    s3_env.bucket("huge")
    objects = _s3_rows(10_000, 1)
    s3_env.put_many("huge", objects)
    keys = sorted(objects)
    wanted = [keys[100], keys[101], keys[5000], keys[9990]]
    storage = config_mod.StorageConfig(endpoint_url=s3_proxy.endpoint)
    got = fingerprints(pa.array([f"s3://huge/{k}" for k in wanted]), storage).to_pylist()
    assert len(s3_proxy.request_lines) == 3  # one jump per run of nearby keys, not 10 pages
    assert got == [_info_fp(f"s3://huge/{k}", storage) for k in wanted]


def test_s3_listing_denied_falls_back_to_head(s3_env, s3_proxy):
    s3_env.bucket("nolist")
    s3_env.put_many("nolist", {"v/a.mp4": b"a", "v/b.mp4": b"bb"})
    s3_env.client().put_bucket_policy(Bucket="nolist", Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Deny", "Principal": "*", "Action": ["s3:ListBucket"], "Resource": "arn:aws:s3:::nolist"}]}))
    storage = config_mod.StorageConfig(endpoint_url=s3_proxy.endpoint)
    uris = ["s3://nolist/v/a.mp4", "s3://nolist/v/b.mp4", "s3://nolist/v/c.mp4", "s3://no-such-bucket/x.mp4"]
    got = fingerprints(pa.array(uris), storage).to_pylist()
    assert got[:2] == [_info_fp(u, storage) for u in uris[:2]] and got[0] and got[2] is None and got[3] is None
    assert any(r.startswith("HEAD /nolist/v/a.mp4") for r in s3_proxy.request_lines)


# -- the selection: columns in, codes out, the same decisions as the specification ------------------
def _committed(out: Path, rng: random.Random) -> None:
    """A random committed history in the Delta tables: runs of videos rows that relabel earlier
    videos (replacing their rows, as a label run does), null fingerprints, other weights,
    errors, and an empty file."""
    from r2p1d_batch.runs import commit, tables

    cols = ("video_id", "source_fingerprint", "weights", "status")
    sch = pa.schema([(c, pa.string()) for c in cols] + [("run_id", pa.string())])
    fs, _ = filesystem(str(out))
    (out / "videos").mkdir(parents=True, exist_ok=True)
    current: set[str] = set()
    for r in range(rng.randint(0, 5)):
        run = f"2026010{r}T000000Z-{r:06d}"
        ids = [f"v{i}" for i in rng.sample(range(30), rng.randint(0, 25))]
        cut = rng.randint(0, len(ids))
        files = []
        for part, chunk in enumerate((ids[:cut], ids[cut:])):
            n = len(chunk)
            t = pa.table({"video_id": chunk,
                          "source_fingerprint": [rng.choice(["fa", "fb", None, "fc"]) for _ in range(n)],
                          "weights": [rng.choice(["w0", "w1"]) for _ in range(n)],
                          "status": [rng.choice(["ok", "error", "ok"]) for _ in range(n)],
                          "run_id": [run] * n}, schema=sch)
            files.append(tables.write_file(fs, str(out / "videos"), f"part-{run}-{part:05d}.parquet", t))
        commit.commit_run(str(out), run, {"run_id": run}, {"clips": (schema.CLIPS_TABLE, []), "videos": (sch, files)},
                          pa.array(sorted(set(ids) & current), pa.string()))
        current |= set(ids)


def test_decide_matches_the_specification_on_random_histories(tmp_path):
    mismatches = []
    for seed in range(12):
        rng = random.Random(seed)
        out = tmp_path / f"o{seed}"
        out.mkdir()
        _committed(out, rng)
        rows = rng.sample(range(40), 30)
        ids = [f"v{i}" for i in rows]
        fps = [rng.choice(["fa", "fb", None, "fc", "fd"]) for _ in rows]
        committed = incremental.committed_videos(str(out))
        for weights in ("w0", "w1", "w2"):
            for mode in ("incremental", "rerun_failed", "force"):
                want = incremental.select(ids, fps, weights, committed, mode)
                codes = incremental.decide(pa.chunked_array([pa.array(ids)]), pa.array(fps, pa.string()),
                                           weights, str(out), None, mode)
                got = [incremental.DECISIONS[c] for c in codes]
                if got != want:
                    mismatches.append((seed, weights, mode))
                assert incremental.counts(codes) == {d: want.count(d) for d in incremental.DECISIONS}
    assert mismatches == []


def test_decide_is_exact_when_high_halves_collide(tmp_path, monkeypatch):
    """Keys are 128-bit; the searches go by the high 64 bits first. Squeezed to 3 values, every
    high half collides: the decisions must still be the specification's."""
    md5 = incremental._md5

    def colliding(*args, **kwargs):
        got = md5(*args, **kwargs)
        got["hi"] = got["hi"] % np.uint64(3)
        return got

    monkeypatch.setattr(incremental, "_md5", colliding)
    for seed in range(6):
        rng = random.Random(100 + seed)
        out = tmp_path / f"o{seed}"
        out.mkdir()
        _committed(out, rng)
        rows = rng.sample(range(40), 30)
        ids, fps = [f"v{i}" for i in rows], [rng.choice(["fa", "fb", None, "fc", "fd"]) for _ in rows]
        committed = incremental.committed_videos(str(out))
        for weights, mode in (("w0", "incremental"), ("w1", "rerun_failed"), ("w0", "force")):
            codes = incremental.decide(pa.chunked_array([pa.array(ids)]), pa.array(fps, pa.string()), weights,
                                       str(out), None, mode)
            assert [incremental.DECISIONS[c] for c in codes] == incremental.select(ids, fps, weights, committed, mode)


def test_decide_on_an_empty_output_labels_everything(tmp_path):
    codes = incremental.decide(pa.chunked_array([pa.array(["a", "b"])]), pa.array(["x", None], pa.string()),
                               "w", str(tmp_path / "none"))
    assert [incremental.DECISIONS[c] for c in codes] == ["new", "new"]
