"""The choice of hard negatives from a ranking (retrieval/mining.py) on hand examples: the
window, the margins, the positives by id and by text, repeats, sampling and the candidate
bound."""

from __future__ import annotations

import random

import pytest

from dist_contrast.retrieval.mining import (
    MiningRule,
    candidates_needed,
    select_negatives,
    text_key,
)

TEXTS = [f"document {i}" for i in range(10)]
KEYS = [text_key(t) for t in TEXTS]
RANKED = list(range(10))  # document i ranked i-th
SCORES = [1.0 - 0.1 * i for i in range(10)]  # 1.0, 0.9, ..., 0.1


def pick(rule: MiningRule, *, positive_score: float = 2.0, positive_ids: set[int] | None = None,
         positive_keys: set[str] | None = None, keys: list[str] = KEYS,
         ranked: list[int] = RANKED, scores: list[float] = SCORES, row: int = 0) -> list[int]:
    chosen, _ = select_negatives(ranked, scores, positive_score=positive_score,
                                 positive_ids=positive_ids or set(),
                                 positive_keys=positive_keys or set(), keys=keys, rule=rule,
                                 row=row)
    return chosen


def test_the_window_skips_range_min_and_stops_before_range_max() -> None:
    assert pick(MiningRule(num_negatives=3, range_min=2, range_max=5)) == [2, 3, 4]
    assert pick(MiningRule(num_negatives=2, range_min=2, range_max=5)) == [2, 3]
    assert pick(MiningRule(num_negatives=5, range_min=0, range_max=5)) == [0, 1, 2, 3, 4]
    # A window past the ranking's end gives what there is.
    assert pick(MiningRule(num_negatives=3, range_min=8, range_max=20)) == [8, 9]


def test_positives_by_id_and_by_text_are_dropped_before_ranks_are_counted() -> None:
    keys = list(KEYS)
    keys[3] = text_key("  The Positive\n")  # another id holding the positive's text
    chosen, counts = select_negatives(
        RANKED, SCORES, positive_score=2.0, positive_ids={0}, positive_keys={"the positive"},
        keys=keys, rule=MiningRule(num_negatives=3, range_min=1, range_max=4))
    # Left after dropping 0 (id) and 3 (text): 1 2 4 5 ...; ranks 1..3 are 2 4 5.
    assert chosen == [2, 4, 5]
    assert (counts.positive_id, counts.positive_text, counts.kept) == (1, 1, 3)


def test_a_repeated_text_counts_once_at_its_best_rank() -> None:
    keys = list(KEYS)
    keys[2] = keys[1] = text_key("same words")
    keys[4] = text_key("SAME   words")
    chosen, counts = select_negatives(RANKED, SCORES, positive_score=2.0, positive_ids=set(),
                                      positive_keys=set(), keys=keys,
                                      rule=MiningRule(num_negatives=4, range_max=10))
    assert chosen == [0, 1, 3, 5]
    assert counts.duplicate == 2


def test_the_absolute_margin_keeps_scores_at_most_the_positive_minus_it() -> None:
    # Positive 1.05, margin 0.25: the ceiling is 0.8; 1.0 and 0.9 go, 0.8 (equal) stays.
    chosen, counts = select_negatives(
        RANKED, [1.0, 0.9, 0.75, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1], positive_score=1.05,
        positive_ids=set(), positive_keys=set(), keys=KEYS,
        rule=MiningRule(num_negatives=3, range_max=6, margin=0.25))
    assert chosen == [2, 3, 4]
    assert counts.margin == 2
    exact = pick(MiningRule(num_negatives=2, range_max=10, margin=0.5), positive_score=1.25,
                 scores=[1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0, -0.125])
    assert exact == [2, 3]  # 0.75 == 1.25 - 0.5 is kept (binary fractions: exact)


def test_the_relative_margin_keeps_scores_at_most_a_fraction_of_the_positive() -> None:
    # Positive 2.0, relative margin 0.25: ceiling 1.5.
    scores = [1.9, 1.6, 1.5, 1.4, 1.0, 0.5, 0.4, 0.3, 0.2, 0.1]
    assert pick(MiningRule(num_negatives=2, range_max=10, relative_margin=0.25),
                positive_score=2.0, scores=scores) == [2, 3]
    # Both margins: the tighter one rules (absolute 0.55 -> ceiling 1.45).
    assert pick(MiningRule(num_negatives=2, range_max=10, relative_margin=0.25, margin=0.55),
                positive_score=2.0, scores=scores) == [3, 4]


def test_the_margin_filters_inside_the_window_and_a_query_may_come_up_short() -> None:
    chosen, counts = select_negatives(
        RANKED, SCORES, positive_score=0.95, positive_ids=set(), positive_keys=set(),
        keys=KEYS, rule=MiningRule(num_negatives=3, range_max=3, margin=0.0))
    assert chosen == [1, 2]  # 1.0 is above the positive; the window ends at rank 2
    assert (counts.margin, counts.kept, counts.short) == (1, 2, 1)


def test_random_sampling_draws_from_the_window_in_rank_order_and_is_seeded_by_the_row() -> None:
    rule = MiningRule(num_negatives=3, range_min=1, range_max=9, sampling="random", seed=7)
    first = pick(rule, row=5)
    assert first == pick(rule, row=5)
    assert first == sorted(first) and set(first) <= set(range(1, 9)) and len(first) == 3
    draws = {tuple(pick(rule, row=row)) for row in range(40)}
    assert len(draws) > 10  # rows draw differently
    assert {d for draw in draws for d in draw} == set(range(1, 9))  # the whole window is used


def test_padding_ids_are_ignored() -> None:
    assert pick(MiningRule(num_negatives=3, range_max=5), ranked=[4, -1, 6, -1],
                scores=[0.5, float("-inf"), 0.4, float("-inf")]) == [4, 6]


def test_candidates_needed_makes_a_short_list_choose_as_the_whole_ranking_does() -> None:
    rng = random.Random(0)
    for trial in range(200):
        size = rng.randint(5, 60)
        keys = [f"t{rng.randint(0, size)}" for _ in range(size)]
        ranked = rng.sample(range(size), size)
        scores = sorted((rng.random() for _ in range(size)), reverse=True)
        positive_ids = set(rng.sample(range(size), rng.randint(0, 3)))
        positive_keys = {keys[i] for i in positive_ids} | {f"t{rng.randint(0, size)}"}
        rule = MiningRule(num_negatives=rng.randint(1, 4), range_min=rng.randint(0, 5),
                          range_max=rng.randint(10, 20), sampling="random", seed=trial)
        repeated = size - len(set(keys))
        k = candidates_needed(rule, len(positive_ids) + len(positive_keys), repeated)
        whole = pick(rule, positive_ids=positive_ids, positive_keys=positive_keys, keys=keys,
                     ranked=ranked, scores=scores, row=trial)
        short = pick(rule, positive_ids=positive_ids, positive_keys=positive_keys, keys=keys,
                     ranked=ranked[:k], scores=scores[:k], row=trial)
        assert short == whole


@pytest.mark.parametrize(("rule", "says"), [
    (MiningRule(num_negatives=0), "--num-negatives must be at least 1"),
    (MiningRule(range_min=-1), "--range-min must be 0 or more"),
    (MiningRule(range_min=5, range_max=5), "--range-max (5) must be above --range-min (5)"),
    (MiningRule(num_negatives=4, range_min=0, range_max=3), "widen it with --range-max"),
    (MiningRule(margin=-0.1), "--margin must be a finite number of 0 or more"),
    (MiningRule(margin=float("nan")), "--margin must be a finite number of 0 or more"),
    (MiningRule(relative_margin=1.0), "--relative-margin must be in [0, 1)"),
    (MiningRule(relative_margin=-0.5), "--relative-margin must be in [0, 1)"),
])
def test_a_setting_out_of_range_is_one_line(rule: MiningRule, says: str) -> None:
    with pytest.raises(ValueError) as refused:
        rule.check()
    assert says in str(refused.value) and "\n" not in str(refused.value)


def test_text_key_ignores_case_and_spacing() -> None:
    assert text_key("  Read a\tCSV\n file ") == text_key("read a csv file") == "read a csv file"
