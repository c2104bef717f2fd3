"""Every selectable loss runs through the seam, gives a finite loss and gradient, and matches
the loss it names; bad names and missing inputs give one clear ValueError."""

from __future__ import annotations

import pytest
import torch

from dist_contrast import losses
from dist_contrast.negatives import Negatives
from dist_contrast.objectives import LOSS_NAMES, ObjectiveInputs, compute_objective


def _inputs(sharded_lse: torch.Tensor | None = None, **extra: object) -> ObjectiveInputs:
    gen = torch.Generator().manual_seed(0)

    def unit(*shape: int) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.randn(*shape, generator=gen), dim=-1)

    query = unit(4, 8).requires_grad_()
    negatives = Negatives(pool=unit(6, 8), query_negatives=unit(4, 3, 8), noise=unit(4, 5, 8))
    if sharded_lse is not None:
        negatives.pool_is_sharded, negatives.pool_lse = True, sharded_lse
    return ObjectiveInputs(
        query=query, key=unit(8, 8), positive_index=torch.arange(4, 8), negatives=negatives,
        normalizer=20.0, dataset_size=100, **extra,  # type: ignore[arg-type]
    )


def test_names_cover_the_tracker_list():
    assert set(LOSS_NAMES) == {"info_nce", "simple", "hard_info_nce", "hard_simple", "nce",
                               "nce_focal", "nce_ghm", "margin", "triplet", "n_pair", "circle",
                               "supcon"}


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("with_labels", [False, True])
def test_every_loss_runs_and_has_a_gradient(name: str, with_labels: bool):
    labels = {"labels": torch.tensor([0, 1, 2, 0]),
              "key_labels": torch.tensor([1, 1, 2, 0, 0, 1, 2, 0])} if with_labels else {}
    inputs = _inputs(**labels)
    loss = compute_objective(name, inputs, torch.tensor(0.1))
    assert loss.dim() == 0 and torch.isfinite(loss)
    (grad,) = torch.autograd.grad(loss, inputs.query)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_names_map_to_their_losses():
    x = _inputs()
    pool = {"negatives": x.negatives.pool, "query_negatives": x.negatives.query_negatives,
            "positive_index": x.positive_index}
    assert compute_objective("info_nce", x, 0.2, tile_size=3).item() == pytest.approx(
        losses.info_nce(x.query, x.key, temperature=0.2, **pool).item(), rel=1e-5)
    assert compute_objective("hard_info_nce", x, 0.2, top_k=3).item() == pytest.approx(
        losses.hard_info_nce(x.query, x.key, temperature=0.2, top_k=3, **pool).item())
    assert compute_objective("simple", x, 0.2, lam=0.5).item() == pytest.approx(
        losses.simple_loss(x.query, x.key, lam=0.5, **pool).item(), rel=1e-5)
    assert compute_objective("nce_focal", x, 0.2).item() == pytest.approx(
        losses.nce_loss(x.query, x.key[4:], x.negatives.noise, temperature=0.2, normalizer=20.0,
                        dataset_size=100, weighting="focal").item())
    ids = torch.arange(8)
    assert compute_objective("supcon", x, 0.2).item() == pytest.approx(
        losses.supcon_loss(x.query, x.key, x.positive_index, ids, temperature=0.2).item())


def test_same_label_keys_are_masked_for_info_nce():
    x = _inputs(labels=torch.tensor([0, 1, 2, 3]), key_labels=torch.tensor([0, 9, 9, 9, 0, 1,
                                                                             2, 3]))
    # key 0 shares query 0's label: it must not count as query 0's negative.
    mask = torch.zeros(4, 8, dtype=torch.bool)
    mask[0, 0] = True
    expected = losses.info_nce(x.query, x.key, x.negatives.pool,
                               query_negatives=x.negatives.query_negatives,
                               positive_index=x.positive_index, key_mask=mask, temperature=0.1)
    assert compute_objective("info_nce", x, 0.1).item() == pytest.approx(expected.item())


def test_errors_are_one_clear_sentence():
    x = _inputs()
    with pytest.raises(ValueError, match="unknown loss 'bogus'; choose one of info_nce"):
        compute_objective("bogus", x, 0.1)
    with pytest.raises(ValueError, match="NCE losses need noise"):
        compute_objective("nce", ObjectiveInputs(x.query, x.key, x.positive_index), 0.1)
    with pytest.raises(ValueError, match="does not take top_k"):
        compute_objective("info_nce", x, 0.1, top_k=3)
    with pytest.raises(ValueError, match="cannot use a sharded"):
        compute_objective("simple", _inputs(sharded_lse=torch.zeros(4)), 0.1)
