"""Negative pools for contrastive losses: in-batch, MoCo queue, memory bank, mined (FAISS).

The trainer's step, in order (see each function's docstring):

1. query forward; key forward without grad through :class:`MomentumEncoder` (with
   :func:`collective.batch_shuffle` / :func:`collective.batch_unshuffle` for shuffle-BN);
2. ``negatives = collective.collect_negatives(pool, query, ids, labels)``; for a sharded
   queue also ``negatives.pool_lse = collective.sharded_pool_lse(query, negatives, ...)``;
3. the loss reads the :class:`Negatives` record;
4. backward and optimiser step; ``momentum_encoder.update(query_encoder)``;
5. ``pool.update(keys, ids, labels, step)`` with the gathered global batch.

The sources themselves (each with its settings section, checks and memory) register
themselves in :mod:`dist_contrast.negatives.registry` when their module is imported: ``queue``
(:mod:`.queue`), ``bank`` (:mod:`.bank`), ``mined`` (:mod:`.mined`, over :mod:`.miner`), and
``corpus`` (:mod:`.corpus`: the settings of the re-mining over a corpus during training, whose
re-miner, :mod:`dist_contrast.train.remining`, hands the step texts rather than keys).
"""

from dist_contrast.negatives.bank import BankConfig, MemoryBank
from dist_contrast.negatives.base import InstanceMemory, Negatives, NegativeSource
from dist_contrast.negatives.config import NegativesConfig
from dist_contrast.negatives.mined import MinerConfig
from dist_contrast.negatives.miner import FaissMiner
from dist_contrast.negatives.momentum import MomentumEncoder
from dist_contrast.negatives.pool import NegativePool, build_momentum_encoder, build_negative_pool
from dist_contrast.negatives.queue import KeyQueue, QueueConfig

__all__ = [
    "BankConfig",
    "FaissMiner",
    "InstanceMemory",
    "KeyQueue",
    "MemoryBank",
    "MinerConfig",
    "MomentumEncoder",
    "NegativePool",
    "NegativeSource",
    "Negatives",
    "NegativesConfig",
    "QueueConfig",
    "build_momentum_encoder",
    "build_negative_pool",
]
