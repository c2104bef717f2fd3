"""Ray on the driver: join ``RAY_ADDRESS`` or start a runtime of our own, and stop it.

With no cluster, :func:`connect` starts a local Ray runtime in-process that makes room for every
worker (on a 2-core laptop they time-share the cores); with ``RAY_ADDRESS`` set it joins that
cluster and checks its resources against the plan. :func:`shutdown_ray` leaves no Ray process
behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dist_contrast.config import Config
from dist_contrast.driver.address import (
    check_reachable,
    cluster_address,
    enable_token_auth_if_available,
)
from dist_contrast.driver.plan import RunPlan
from dist_contrast.errors import UserError

#: The private directory of :func:`_own_address_lookup`, removed by :func:`shutdown_ray`.
_LOOKUP_DIR: str | None = None


def connect(plan: RunPlan) -> Any:
    """Join ``RAY_ADDRESS`` (checked reachable first, its resources checked against the plan)
    or start a local runtime; the ``ray`` module, connected."""
    cfg = plan.config
    ray = _join_or_start(cfg.cpus_needed, cfg.trainer.show_worker_logs)
    if cluster_address() is not None:
        _check_cluster(ray, plan)
    return ray


def connect_for_tasks(cpus: int | None) -> Any:
    """Ray for tasks of one CPU each (``dist-contrast mine``'s encoding): ``RAY_ADDRESS``'s
    cluster, or a local runtime with room for ``cpus`` of them (default: this machine's)."""
    return _join_or_start(cpus or 1, show_logs=False)


def _join_or_start(cpus_needed: float, show_logs: bool) -> Any:
    address = cluster_address()
    if address is None:
        return _start_local(cpus_needed, show_logs)
    check_reachable(address)
    enable_token_auth_if_available()  # read by Ray when it connects
    import ray

    try:
        ray.init(logging_level=logging.WARNING, log_to_driver=show_logs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(
            f"cannot reach the Ray cluster at RAY_ADDRESS={address} "
            f"({str(exc).splitlines()[0][:160]}); start it, give its token (RAY_AUTH_TOKEN or "
            "~/.ray/auth_token), or unset RAY_ADDRESS to run locally"
        ) from None
    return ray


def _check_cluster(ray: Any, plan: RunPlan) -> None:
    """The cluster's CPUs, GPUs and memory against the plan (a refusal is one line), and its
    storage: notes and warnings printed."""
    from dist_contrast.preflight import check_resources, check_storage

    cfg = plan.config
    resources = ray.cluster_resources()
    for note in check_resources(
        cfg, cpus=float(resources.get("CPU", 0)), gpus=float(resources.get("GPU", 0)),
        memory_bytes=int(resources.get("memory", 0)), local=False,
        train_size=plan.data.train_size, input_shape=plan.data.input_shape,
    ):
        print(f"dist-contrast: note: {note}", flush=True)
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    for warning in check_storage(cfg.experiment.output_dir, nodes):
        print(f"dist-contrast: warning: {warning}", flush=True)


def _start_local(cpus_needed: float, show_logs: bool) -> Any:
    """A local runtime with room for every worker, even on a 2-core laptop (they time-share)."""
    import ray

    num_cpus = max(os.cpu_count() or 1, int(cpus_needed + 0.999))
    with _own_address_lookup() as sessions:
        ray.init(
            # A runtime of our own, even when a `ray start` cluster runs on this machine
            # (without it Ray joins that one, which refuses num_cpus).
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=show_logs,
            configure_logging=True,
            _temp_dir=sessions,
        )
    return ray


@contextlib.contextmanager
def _own_address_lookup() -> Iterator[str]:
    """Make every process of the local runtime find that runtime when it looks one up.

    Ray processes that look for "the" cluster (Ray Train's placement-group cleaner does, every
    second) read ``$RAY_TMPDIR/ray/ray_current_cluster``, which a ``ray start`` on this machine
    writes and leaves behind when it is not stopped with ``ray stop``. A stale one hangs each
    lookup for 40 s and every run's end for 12 s; a live one points at another cluster. So the
    local runtime starts with ``RAY_TMPDIR`` set to a private directory, which its processes
    inherit, and the address file there names its own GCS. Its session directories and logs
    stay where Ray puts them by default (yielded, for ``ray.init(_temp_dir=...)``).
    """
    global _LOOKUP_DIR
    import ray

    # Where Ray keeps its sessions by default (RAY_TMPDIR, TMPDIR on Linux, else /tmp).
    linux_tmp = os.environ.get("TMPDIR") if sys.platform.startswith("linux") else None
    sessions = str(Path(os.environ.get("RAY_TMPDIR") or linux_tmp or "/tmp") / "ray")
    private = tempfile.mkdtemp(prefix="dist-contrast-ray-")
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = private  # inherited by the processes ray.init spawns
    try:
        yield sessions
    finally:
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
    if not ray.is_initialized():
        shutil.rmtree(private, ignore_errors=True)
        return
    _LOOKUP_DIR = private
    address_file = Path(private) / "ray" / "ray_current_cluster"
    address_file.parent.mkdir()
    address_file.write_text(ray.get_runtime_context().gcs_address)


def lookup_dir() -> str | None:
    """The local runtime's private address-lookup folder (None when none is running)."""
    return _LOOKUP_DIR


def shutdown_ray() -> None:
    """Stop the local Ray runtime (or leave the cluster): no Ray process outlives the run."""
    global _LOOKUP_DIR
    import ray

    if ray.is_initialized():
        ray.shutdown()
    if _LOOKUP_DIR is not None:
        shutil.rmtree(_LOOKUP_DIR, ignore_errors=True)
        _LOOKUP_DIR = None


def use_gpu(cfg: Config, ray: Any) -> bool:
    """Whether the workers train on GPUs in the cluster ``ray`` is connected to."""
    return cfg.trainer.trains_on_gpu(float(ray.cluster_resources().get("GPU", 0)))


def trial_slots(ray: Any, cfg: Config) -> int:
    """How many trainings of ``cfg``'s size the connected cluster runs at once (at least 1)."""
    needed = cfg.cpus_needed
    return max(1, int(float(ray.cluster_resources().get("CPU", 0)) // needed))
