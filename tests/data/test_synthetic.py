import time

import torch

from dist_contrast.data import DataConfig, build_data
from tests.data.helpers import knn_accuracy


def test_raw_knn_near_chance_but_signal_projection_recovers_classes():
    # Default generator settings, fewer rows to stay fast.
    bundle = build_data(DataConfig(num_samples=6000), seed=0)
    (memory, memory_labels), (queries, query_labels) = bundle.eval_train, bundle.eval_test
    assert memory_labels is not None and query_labels is not None
    chance = 1 / 10
    raw = knn_accuracy(memory, memory_labels, queries, query_labels)
    assert raw < 2 * chance, raw
    # The augmentation-invariant linear map: project out the nuisance subspace.
    signal_basis = bundle.train.source.signal_basis  # [D, signal_dim]
    projected = knn_accuracy(
        memory @ signal_basis, memory_labels, queries @ signal_basis, query_labels
    )
    assert projected > 0.9, projected


def test_views_share_only_the_signal():
    bundle = build_data(DataConfig(num_samples=500))
    source = bundle.train.source
    first, second = bundle.train.views(torch.arange(50), epoch=0)
    # In the signal subspace the two views agree up to the small noise ...
    signal_gap = ((first - second) @ source.signal_basis).norm(dim=1)
    assert signal_gap.max() < 6 * 0.1 * 2**0.5 * source.signal_dim**0.5
    # ... while the nuisance part is redrawn and dominates the raw distance.
    assert (first - second).norm(dim=1).mean() > 10 * signal_gap.mean()


def test_millions_of_rows_are_lazy():
    start = time.perf_counter()
    bundle = build_data(DataConfig(num_samples=5_000_000, max_eval_train=1000, max_eval_test=1000))
    item = bundle.train[3_999_999]
    assert time.perf_counter() - start < 5
    assert len(bundle.train) == 4_000_000 and item["view1"].shape == (64,)
    # A row is the same whichever batch generates it (up to float rounding).
    assert torch.allclose(bundle.train.clean([123])[0], bundle.train.clean([5, 123])[1], atol=1e-6)
    alone, in_batch = bundle.train.views([77], 3)[0][0], bundle.train.views([1, 77], 3)[0][1]
    assert torch.allclose(alone, in_batch, atol=1e-6)


def test_labels_are_roughly_balanced():
    bundle = build_data(DataConfig(num_samples=20_000))
    counts = torch.bincount(bundle.eval_train[1], minlength=10).float()
    assert counts.min() > 0.8 * counts.mean()
