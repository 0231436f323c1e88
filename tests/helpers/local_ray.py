"""The session's small local Ray (the ``ray_local`` fixture in conftest.py)."""
from __future__ import annotations

from . import REPO

# Idle workers stay between a session's runs (Ray kills those beyond num_cpus after 1 s idle):
# a decode worker imports torch for the exact resize (~2.5 s), and each run would pay that again
# in a fresh process. A cluster under steady load reuses its workers the same way; every run
# still starts its own classifier actor.
KEEP_IDLE_WORKERS = {"num_workers_soft_limit": 16, "idle_worker_killing_time_threshold_ms": 600_000}


def init_local_ray():
    """The session's small local Ray (2 CPUs, small object store), started if not running."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",  # our own, even when a `ray start` cluster runs on this machine
            num_cpus=2,
            object_store_memory=300 * 2**20,
            include_dashboard=False,
            runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
            log_to_driver=False,
            _system_config=KEEP_IDLE_WORKERS,
        )
    return ray
