"""Defaults that size themselves (issue 12): the sizing arithmetic, the config's record of which
keys the user set, and the job on real local Rays of different sizes (no mocks)."""
from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r2p1d_batch import config
from r2p1d_batch.planning.sizing import (
    MAX_ACTOR_THREADS,
    WRITER_CPUS,
    decode_slots,
    size_to_cluster,
    sized_keys,
    writer_tasks,
)

from tests.helpers import REPO
from tests.helpers.videos import make_video


def test_config_records_what_the_user_set():
    assert config.load().explicit == frozenset()
    cfg = config.load("cpu", ["model.batch_size=4", "ray={num_cpus: 2}"], manifest="m.parquet",
                      **{"output.path": "o", "run.mode": None})
    assert cfg.explicit == {"decode.num_cpus", "decode.concurrency", "model.runtime", "model.num_cpus",
                            "model.concurrency", "model.batch_size", "ray.num_cpus", "manifest", "output.path"}
    assert cfg.model_copy(update={"manifest": "x"}).explicit == cfg.explicit  # survives the pipeline's copy


@pytest.mark.parametrize("cpus, decode, tasks, model, actors", [
    (1, 0.25, 1, 0.5, 1),
    (2, 0.25, 1, 1.5, 1),  # = configs/cpu.yaml
    (4, 0.75, 1, 3.0, 1),
    (8, 0.75, 1, 7.0, 1),
    (16, 0.875, 2, 7.0, 2),  # 2 actors of 7 threads; the spare 1.75 cores: 2 decode tasks
    (64, 0.9687, 8, 7.0, 8),
])
def test_cpu_cluster_sized_keys(cpus, decode, tasks, model, actors):
    chosen = sized_keys(cpus, 0, frozenset(), config.load())
    assert chosen == {"decode.num_cpus": decode, "decode.concurrency": tasks, "model.num_cpus": model,
                      "model.concurrency": actors}
    assert model <= MAX_ACTOR_THREADS
    assert actors * model + tasks * decode + WRITER_CPUS <= cpus + 1e-9  # never more than the cluster
    sized, record = size_to_cluster(config.load(), {"CPU": cpus})
    assert record["model_threads"] == max(1, round(model))  # threads = the reservation
    assert record["decode_slots"] == tasks == int((cpus - actors * model - WRITER_CPUS) / decode + 1e-9)
    assert sized.decode.num_cpus == decode and sized.model.num_cpus == model


def test_two_cores_reproduce_the_cpu_profile():
    profile = config.load("cpu")
    sized, _ = size_to_cluster(config.load(), {"CPU": 2.0})
    assert (sized.decode.num_cpus, sized.model.num_cpus, sized.model.concurrency) == (
        profile.decode.num_cpus, profile.model.num_cpus, profile.model.concurrency)


def test_gpu_cluster_gives_decode_every_free_core():
    sized, record = size_to_cluster(config.load(), {"CPU": 16.0, "GPU": 2.0})
    assert record["chosen"] == {"model.num_gpus": 1, "model.num_cpus": 0.75} and record["kind"] == "gpu"
    assert sized.model.num_gpus == 1 and sized.model.effective_batch_size == 64
    assert sized.decode.num_cpus == 1.0 and sized.decode.concurrency is None
    assert writer_tasks(sized) == 1
    assert record["decode_slots"] == 15  # every core but the one the actor and its writer task share
    # a GPU actor pool of up to 4: a writer task beside each (a quarter core each)
    assert writer_tasks(config.load("cluster")) == 4
    # model.device=cpu set by the user: a CPU plan even on a GPU cluster
    _, record = size_to_cluster(config.load(None, ["model.device=cpu"]), {"CPU": 16.0, "GPU": 2.0})
    assert record["kind"] == "cpu" and "model.num_gpus" not in record["chosen"]


def test_explicit_settings_win():
    cfg = config.load(None, ["model.num_cpus=2"])
    sized, record = size_to_cluster(cfg, {"CPU": 8.0})
    assert sized.model.num_cpus == 2 and "model.num_cpus" not in record["chosen"]
    # the rest decodes, less the writer's quarter core: 5.75 cores over 6 tasks
    assert record["chosen"] == {"decode.num_cpus": 0.9583, "decode.concurrency": 6} and record["decode_slots"] == 6
    cfg = config.load(None, ["decode.num_cpus=0.5", "model.concurrency=2"])
    sized, record = size_to_cluster(cfg, {"CPU": 8.0})
    assert sized.decode.num_cpus == 0.5 and sized.model.concurrency == 2
    assert record["chosen"] == {"model.num_cpus": 3.0, "decode.concurrency": 3}  # (8 - 0.5 - 0.25) / 2, whole threads
    assert record["kept"] == ["decode.num_cpus", "model.concurrency"]
    # a profile's keys count as set: cluster.yaml's GPU actor is not resized on a CPU cluster
    cfg = config.load("cluster")
    assert sized_keys(4, 0, cfg.explicit, cfg) == {}
    assert size_to_cluster(config.load("cpu"), {"CPU": 32.0})[1]["chosen"] == {}


def test_decode_slots_respects_decode_concurrency():
    cfg = config.load(None, ["decode.concurrency=3"])
    assert decode_slots(cfg, 16.0) == 3
    assert decode_slots(config.load(None, ["decode.concurrency=[1, 4]"]), 16.0) == 4


# -- the job on real local Rays of different sizes --------------------------------------------
def _job(tmp_path, name, *sets):
    out = tmp_path / name
    cmd = [sys.executable, str(REPO / "jobs" / "label.py"), str(tmp_path / "m.parquet"), "--output", str(out),
           "--set", "model.weights=random", "--set", "ray.progress_bars=false",
           "--set", "ray.object_store_memory_mb=300", *[a for s in sets for a in ("--set", s)]]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(out), "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout


@pytest.mark.ray
@pytest.mark.slow
def test_job_sizes_itself_to_the_local_ray(tmp_path):
    video = make_video(tmp_path / "v.mp4", n_frames=30, fps=15, size=(64, 48))
    pq.write_table(pa.table({"uri": [str(video), str(tmp_path / "absent.mp4")]}), tmp_path / "m.parquet")

    one, text = _job(tmp_path, "one", "ray.num_cpus=1")
    assert one["sizing"]["cluster"] == {"CPU": 1.0, "GPU": 0.0}
    assert one["sizing"]["chosen"] == {"model.concurrency": 1, "model.num_cpus": 0.5, "decode.num_cpus": 0.25,
                                       "decode.concurrency": 1}
    assert one["config"]["model"]["num_cpus"] == 0.5 and one["config"]["decode"]["num_cpus"] == 0.25
    assert ("sized for 1 CPU / 0 GPU: model.concurrency=1, model.num_cpus=0.5, decode.num_cpus=0.25, "
            "decode.concurrency=1") in text
    assert (one["videos"], one["videos_ok"], one["videos_error"]) == (2, 1, 1)

    four, text = _job(tmp_path, "four", "ray.num_cpus=4", "model.num_cpus=2")
    assert four["sizing"]["cluster"]["CPU"] == 4.0
    assert four["sizing"]["chosen"] == {"decode.num_cpus": 0.875, "decode.concurrency": 2}
    assert four["sizing"]["kept"] == ["model.num_cpus"]
    assert four["sizing"]["decode_slots"] == 2 and four["sizing"]["model_threads"] == 2
    assert four["config"]["model"]["num_cpus"] == 2.0
    assert (four["videos"], four["clips"]) == (2, one["clips"])


def test_a_classifier_actor_is_never_sized_past_the_biggest_node():
    """3 CPUs over three 1-CPU nodes (the multi-node test's shape): one actor of 1 CPU, not 2."""
    from r2p1d_batch.planning.sizing import sized_keys

    cfg = config.load(None, ["model.weights=random"])
    assert sized_keys(3.0, 0.0, cfg.explicit, cfg)["model.num_cpus"] == 2.0  # one 3-CPU node
    chosen = sized_keys(3.0, 0.0, cfg.explicit, cfg, largest_node_cpus=1.0)
    assert chosen["model.num_cpus"] == 1.0 and chosen["decode.num_cpus"] == 0.875  # 1.75 cores left: 2 tasks
