"""A classifier actor that Ray restarts (its process killed, as on a lost node) works again from
what it was constructed with, after the driver has dropped every reference of its own: the
arguments are small and inline (no ObjectRef), and the actor loads the model itself."""
from __future__ import annotations

import gc
import io
import os
import signal
import time

import psutil
import pytest
import ray
import ray.cloudpickle as cloudpickle

from r2p1d_batch import config, pipeline
from r2p1d_batch.classifying.stage import ClassifierActor

from tests.helpers.videos import decoded_table

pytestmark = [pytest.mark.ray, pytest.mark.slow]

RESTART_WARNING = "has constructor arguments in the object store"


class _RefCounter(cloudpickle.CloudPickler):
    """Pickles like Ray does and counts the ObjectRefs met on the way."""

    def __init__(self, f):
        super().__init__(f)
        self.refs = 0

    def reducer_override(self, obj):
        if isinstance(obj, ray.ObjectRef):
            self.refs += 1
        return super().reducer_override(obj)



def test_classifier_args_are_small_and_hold_no_object_ref():
    cfg = config.load(None, ["model.weights=random", "output.embeddings=true"])
    args = pipeline.classifier_args(cfg, "random:seed=0")
    buf = io.BytesIO()
    pickler = _RefCounter(buf)
    pickler.dump(args)
    assert pickler.refs == 0
    # Ray inlines task and actor arguments up to max_direct_call_object_size (100 KiB)
    assert len(buf.getvalue()) < 16 * 1024, len(buf.getvalue())


def _actor_pid(actor) -> int:
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))


def test_a_restarted_classifier_scores_again_after_the_driver_dropped_its_arguments(ray_local, capfd):
    cfg = config.load(None, ["model.weights=random", "model.runtime=onnxruntime"])
    remote = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=-1)(ClassifierActor)
    actor = remote.remote(**pipeline.classifier_args(cfg, None))
    batch, _ = decoded_table("cvcc", 7)
    before = ray.get(actor.__call__.remote(batch))
    del cfg, remote
    gc.collect()
    pid = _actor_pid(actor)
    psutil.Process(pid).send_signal(signal.SIGKILL)
    deadline = time.time() + 120
    while True:  # the call after the kill waits for the restart (max_task_retries=-1)
        try:
            after = ray.get(actor.__call__.remote(batch), timeout=120)
            break
        except ray.exceptions.RayActorError:
            assert time.time() < deadline
            time.sleep(0.5)
    assert _actor_pid(actor) != pid  # a new process, constructed again from the same arguments
    for name in ("label_id", "topk_ids", "weights", "runtime"):
        assert after.column(name).to_pylist() == before.column(name).to_pylist(), name
    assert after.column("label_id").null_count == 1  # the video row passes through unscored
    ray.kill(actor)
    assert RESTART_WARNING not in capfd.readouterr().err  # our own actor: inline arguments, no warning
