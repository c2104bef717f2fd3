"""Results of gloo workers as plain NumPy arrays.

``tests.gloo`` returns results through a torch multiprocessing queue, which passes tensors as
shared-memory file descriptors; a worker that exits before the parent has read them resets
the connection. NumPy arrays are pickled by value, so converting first avoids the race.
"""

from typing import Any

import numpy as np
import torch


def portable(value: Any) -> Any:
    """``value`` with every tensor (nested in tuples, lists, dicts) turned into a NumPy array."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(portable(v) for v in value)
    return value


def tensors(value: Any) -> Any:
    """Inverse of :func:`portable`: NumPy arrays back to tensors."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if isinstance(value, dict):
        return {k: tensors(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(tensors(v) for v in value)
    return value
