"""GradCache (Gao et al. 2021): a batch's exact gradient with the encoder's activations held for
one chunk at a time.

A step with ``trainer.grad_cache`` encodes in three passes:

1. :meth:`GradCache.encode` runs the encoder over the batch chunk by chunk without a graph and
   returns the embeddings as leaves that require grad, keeping each chunk's random state;
2. the step computes the loss from those leaves as it would from the encoder's output (the
   gather across workers, the pools and the objective are unchanged), and
   :meth:`GradCache.backward` takes the loss's gradient with respect to the leaves only (the
   gather's backward sends each worker's rows their gradient home);
3. each chunk is encoded again, with a graph and its random state replayed (dropout draws the
   same masks), and back-propagates ``<embedding, cached gradient>``.

The parameter gradient is the full batch's: the loss depends on the parameters only through
the embeddings (and τ, whose gradient is added on the last chunk), and the chain rule sums the
chunks' contributions. An encoder whose output for one row depends on the other rows
(BatchNorm) would see other statistics in chunks; the config refuses it.

Under DeepSpeed every chunk is one ``engine.backward`` inside one accumulation: the boundary is
off until the last chunk, so no reduction runs early (ZeRO 2 reduces into its partitions as it
goes, as it does for any accumulation), and the caller steps the engine once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


def split(inputs: Any, size: int) -> list[Any]:
    """``inputs`` (a tensor's rows or a list of texts) in consecutive chunks of ``size``."""
    return [inputs[start : start + size] for start in range(0, len(inputs), size)]


@dataclass(frozen=True)
class RandomState:
    """The random state a forward pass draws from: the CPU generator's, and the device's."""

    cpu: Tensor
    device: Tensor | None

    @classmethod
    def capture(cls, device: torch.device) -> RandomState:
        on_gpu = device.type == "cuda"
        return cls(torch.get_rng_state(),
                   torch.cuda.get_rng_state(device) if on_gpu else None)

    @contextmanager
    def replayed(self, device: torch.device) -> Iterator[None]:
        """Draw from this state inside; the generators are as they were before, afterwards."""
        devices = [device.index or 0] if self.device is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.device is not None:
                torch.cuda.set_rng_state(self.device, device)
            yield


@dataclass
class _Encoded:
    """One side's batch as the first pass saw it: its chunks, their random states and the
    leaf the loss is computed from."""

    side: str
    chunks: list[Any]
    states: list[RandomState]
    leaf: Tensor


@dataclass
class GradCache:
    """One step's cached encodings (create one per step). ``engine`` is called as
    ``engine(inputs, side=...)`` and back-propagates with ``engine.backward``; with DeepSpeed it
    also takes ``set_gradient_accumulation_boundary``."""

    engine: Any
    chunk_size: int
    encoded: list[_Encoded] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return torch.device(self.engine.device)

    def encode(self, inputs: Any, side: str) -> Tensor:
        """Pass 1: ``inputs`` encoded in chunks without a graph. Shape: -> [n, D], a leaf that
        requires grad."""
        chunks = split(inputs, self.chunk_size)
        states, outputs = [], []
        with torch.no_grad():
            for chunk in chunks:
                states.append(RandomState.capture(self.device))
                outputs.append(self.engine(chunk, side=side))
        leaf = torch.cat(outputs).detach().requires_grad_(True)
        self.encoded.append(_Encoded(side, chunks, states, leaf))
        return leaf

    def backward(self, loss: Tensor, direct: Sequence[Tensor] = (),
                 recompute: Callable[[], Sequence[Tensor]] | None = None) -> None:
        """Passes 2 and 3: the loss's gradient at the embeddings, then each chunk re-encoded and
        back-propagated through the engine, as one accumulated gradient.

        ``direct`` are the tensors the loss used besides the embeddings that lead to
        parameters (a learnable τ); ``recompute`` makes them again with their graph, and their
        gradient joins the last chunk's backward."""
        extra = [t for t in direct if t.requires_grad]
        leaves = [e.leaf for e in self.encoded]
        grads = torch.autograd.grad(loss, leaves + extra, allow_unused=True)
        leaf_grads = [torch.zeros_like(leaf) if g is None else g
                      for leaf, g in zip(leaves, grads[: len(leaves)], strict=True)]
        extra_grads = grads[len(leaves):]
        pieces = [(entry, chunk, state, grad)
                  for entry, leaf_grad in zip(self.encoded, leaf_grads, strict=True)
                  for chunk, state, grad in zip(entry.chunks, entry.states,
                                                split(leaf_grad, self.chunk_size), strict=True)]
        boundary = getattr(self.engine, "set_gradient_accumulation_boundary", None)
        for index, (entry, chunk, state, grad) in enumerate(pieces):
            last = index == len(pieces) - 1
            if boundary is not None:
                boundary(last)
            with state.replayed(self.device):
                output = self.engine(chunk, side=entry.side)
            surrogate = (output * grad.to(output.dtype)).sum()
            if last:
                again = [t for t in recompute() if t.requires_grad] if extra and recompute else []
                for tensor, tensor_grad in zip(again, extra_grads, strict=True):
                    if tensor_grad is not None:
                        surrogate = surrogate + (tensor * tensor_grad).sum()
            self.engine.backward(surrogate)
        self.encoded.clear()
