import pytest
import torch
import torch.nn.functional as F

from dist_contrast import dist
from dist_contrast.negatives import MemoryBank
from dist_contrast.negatives.bank import last_occurrence
from tests.gloo import run_distributed
from tests.negatives._portable import portable, tensors


def test_init_on_unit_sphere_and_same_seed_same_bank():
    bank = MemoryBank(50, 8, seed=3)
    torch.testing.assert_close(bank.vectors.norm(dim=1), torch.ones(50))
    assert torch.equal(bank.vectors, MemoryBank(50, 8, seed=3).vectors)
    assert not torch.equal(bank.vectors, MemoryBank(50, 8, seed=4).vectors)
    assert (bank.write_step == -1).all()


def test_update_replaces_with_newest_and_tracks_step_and_labels():
    bank = MemoryBank(10, 4, seed=0)
    keys = F.normalize(torch.randn(3, 4), dim=1)
    # id 7 appears twice: the later (newer) key wins.
    bank.update(keys, torch.tensor([2, 7, 7]), torch.tensor([1, 0, 5]), step=4)
    torch.testing.assert_close(bank.vectors[2], keys[0])
    torch.testing.assert_close(bank.vectors[7], keys[2])
    assert bank.write_step.tolist() == [-1, -1, 4, -1, -1, -1, -1, 4, -1, -1]
    assert bank.labels[7] == 5 and bank.labels[2] == 1


def test_momentum_update_is_mixed_and_renormalised():
    bank = MemoryBank(5, 4, momentum=0.5, seed=0)
    old = bank.vectors[1].clone()
    key = F.normalize(torch.randn(1, 4), dim=1)
    bank.update(key, torch.tensor([1]), None, step=0)
    torch.testing.assert_close(bank.vectors[1], F.normalize(0.5 * old + 0.5 * key[0], dim=0))


def test_last_occurrence():
    assert sorted(last_occurrence(torch.tensor([4, 1, 4, 2, 1])).tolist()) == [2, 3, 4]


def test_noise_and_pool():
    bank = MemoryBank(20, 4, noise_samples=6, seed=0)
    negatives = bank.negatives(torch.randn(3, 4), torch.tensor([0, 5, 9]), None)
    assert negatives.noise is not None and negatives.noise.shape == (3, 6, 4)
    assert negatives.pool is None
    pooled = MemoryBank(20, 4, as_pool=True, seed=0).negatives(
        torch.randn(3, 4), torch.tensor([0, 5, 9]), None
    )
    assert pooled.pool is not None and pooled.pool_mask is not None
    assert pooled.pool_mask.sum(dim=1).tolist() == [1, 1, 1] and pooled.pool_mask[1, 5]


def test_entries_are_constant_copies_of_the_stored_keys():
    bank = MemoryBank(6, 4, seed=0)
    ids = torch.tensor([4, 1, 4])
    entries = bank.entries(ids)
    torch.testing.assert_close(entries, bank.vectors[[4, 1, 4]])
    assert not entries.requires_grad
    before = entries.clone()
    bank.update(F.normalize(torch.randn(2, 4), dim=1), torch.tensor([4, 1]), None, step=1)
    torch.testing.assert_close(entries, before)  # a later write does not change them


def test_proximal_penalty_against_previous_entry():
    bank = MemoryBank(5, 4, seed=0)
    features = torch.randn(2, 4, requires_grad=True)
    penalty = bank.proximal_penalty(features, torch.tensor([1, 3]), weight=0.5)
    expected = 0.5 * (features - bank.vectors[[1, 3]]).pow(2).sum(dim=1).mean()
    torch.testing.assert_close(penalty, expected)
    penalty.backward()
    assert features.grad is not None


def test_state_round_trip():
    bank = MemoryBank(10, 4, noise_samples=3, seed=0)
    keys = F.normalize(torch.randn(2, 4), dim=1)
    bank.update(keys, torch.tensor([1, 2]), torch.tensor([0, 1]), 3)
    restored = MemoryBank(10, 4, noise_samples=3, seed=99)
    restored.load_state_dict(bank.state_dict())
    for name in ("vectors", "labels", "write_step"):
        assert torch.equal(getattr(restored, name), getattr(bank, name))
    assert torch.equal(restored.noise(2)[1], bank.noise(2)[1])  # noise stream resumes too


def _bank_on_ranks() -> tuple:
    bank = MemoryBank(12, 4, seed=0)  # same seed on every rank
    torch.manual_seed(10 + dist.rank())
    for step in range(3):
        keys = F.normalize(torch.randn(2, 4), dim=1)
        ids = torch.tensor([2 * dist.rank(), 2 * dist.rank() + 1]) + 4 * step
        gathered = [dist.all_gather_no_grad(t) for t in (keys, ids, ids % 3)]
        bank.update(*gathered, step)
    return portable((bank.vectors, bank.labels, bank.write_step))


def test_gathered_update_keeps_banks_identical_on_two_workers():
    (vectors0, labels0, steps0), (vectors1, labels1, steps1) = tensors(
        run_distributed(_bank_on_ranks)
    )
    assert torch.equal(vectors0, vectors1) and torch.equal(labels0, labels1)
    assert torch.equal(steps0, steps1)
    assert steps0.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]


def test_random_entries_are_distinct_never_the_anchor_and_uniform():
    bank = MemoryBank(20, 4, random_k=5, seed=0)
    ids = torch.tensor([0, 3, 19, 3])
    counts = torch.zeros(20)
    for _ in range(400):
        drawn = bank.random_entries(ids, 5)
        assert drawn.shape == (4, 5)
        for row, anchor in zip(drawn, ids, strict=True):
            assert len(set(row.tolist())) == 5  # no duplicates
            assert int(anchor) not in row.tolist()  # never the anchor's own entry
        counts += torch.bincount(drawn[1], minlength=20).float()  # anchor 3
    # Anchor 3's 2,000 draws spread evenly over the 19 other entries (expected 105.3 each).
    assert counts[3] == 0
    others = torch.cat([counts[:3], counts[4:]])
    chi2 = float(((others - 2000 / 19) ** 2 / (2000 / 19)).sum())
    assert chi2 < 43.8  # the 0.999 quantile of chi-square with 18 degrees of freedom


def test_random_k_negatives_are_the_drawn_entries_and_the_draw_resumes():
    bank = MemoryBank(30, 4, random_k=6, seed=1, noise_seed=7)
    ids = torch.tensor([2, 9])
    state = bank.state_dict()
    first = bank.negatives(torch.zeros(2, 4), ids, None)
    assert first.query_negatives is not None and first.query_negatives.shape == (2, 6, 4)
    assert first.pool is None
    bank.load_state_dict(state)
    again = bank.negatives(torch.zeros(2, 4), ids, None)
    assert again.query_negatives is not None
    torch.testing.assert_close(again.query_negatives, first.query_negatives)
    # Every drawn row is a bank entry other than the anchor's.
    for row, anchor in zip(first.query_negatives, ids, strict=True):
        sims = row @ bank.vectors.T
        matched = sims.argmax(dim=1)
        torch.testing.assert_close(bank.vectors[matched], row)
        assert int(anchor) not in matched.tolist()


def test_random_k_must_be_below_the_rows():
    with pytest.raises(ValueError, match="random_k=10 needs fewer than the 10 training rows"):
        MemoryBank(10, 4, random_k=10)
