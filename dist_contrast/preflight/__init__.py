"""Checks on the driver, in seconds, before any worker starts.

Each check either raises :class:`~dist_contrast.errors.UserError` with one line that names the
problem and the fix, or returns one-line notes for the driver to print. Nothing is written.

* ``data.py``: from the data's size alone (the config or a file's header, no row read): a
  batch larger than a worker's shard, a model too big for CPU workers.
* ``resources.py``: CPUs, GPUs and the memory the workers will need (the estimate of
  ``memory.py``), against what this machine or the Ray cluster has.
* ``checkpoint.py``: a checkpoint to resume is complete, intact, loadable without running
  code, and holds the model and pools this config builds.
* ``storage.py``: on a cluster of several nodes, an ``experiment.output_dir`` on this node's
  own disk (checkpoints need storage that every node reaches).
* ``notes.py``: settings the run adjusts (a warm-up longer than the run).

The driver's plan (:mod:`dist_contrast.driver.plan`) calls them in that order.
"""

from dist_contrast.negatives.mined import (
    HNSW_LEVELS,
    IDMAP_OVERHEAD,
    IVF_OVERHEAD,
    index_bytes_per_key,
)
from dist_contrast.preflight.checkpoint import check_checkpoint
from dist_contrast.preflight.data import (
    MAX_CPU_PARAMETERS,
    check_batch,
    check_data_shape,
    check_model_size,
)
from dist_contrast.preflight.memory import (
    LOCAL_RAY_BYTES,
    WORKER_BASE_BYTES,
    count_parameters,
    estimate_memory,
)
from dist_contrast.preflight.notes import config_notes
from dist_contrast.preflight.resources import available_memory, check_resources, local_resources
from dist_contrast.preflight.storage import check_storage, filesystem_type
from dist_contrast.train.state import check_safe_to_load

# check_safe_to_load is re-exported for the driver; the worker imports it from
# dist_contrast.train.state (train/ does not import this package). The FAISS per-key overheads
# are the miner's own (dist_contrast/negatives/mined.py), re-exported with the memory table.
__all__ = [
    "HNSW_LEVELS",
    "IDMAP_OVERHEAD",
    "IVF_OVERHEAD",
    "LOCAL_RAY_BYTES",
    "MAX_CPU_PARAMETERS",
    "WORKER_BASE_BYTES",
    "available_memory",
    "check_batch",
    "check_checkpoint",
    "check_data_shape",
    "check_model_size",
    "check_resources",
    "check_safe_to_load",
    "check_storage",
    "config_notes",
    "count_parameters",
    "estimate_memory",
    "filesystem_type",
    "index_bytes_per_key",
    "local_resources",
]
