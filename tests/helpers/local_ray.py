"""The session's small local Ray (the ``ray_local`` fixture in conftest.py)."""
from __future__ import annotations

from . import REPO


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
        )
    return ray
