"""Partitions: disjoint, covering, seeded, and skewed by a small Dirichlet alpha."""

from __future__ import annotations

import random

import pytest

from edgetune.errors import EdgetuneError
from edgetune.federated.partition import label_skew, partition, split_holdout


def _labels(n: int = 600, classes: int = 6) -> list[int]:
    rng = random.Random(0)
    return [rng.randrange(classes) for _ in range(n)]


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_partitions_are_disjoint_and_cover(scheme):
    labels = _labels()
    parts = partition(labels, 8, scheme, alpha=0.5, seed=3)
    flat = [i for p in parts for i in p]
    assert len(parts) == 8 and all(parts)
    assert sorted(flat) == list(range(len(labels)))  # every row once: disjoint and covering
    assert parts == partition(labels, 8, scheme, alpha=0.5, seed=3)  # a function of the seed
    assert parts != partition(labels, 8, scheme, alpha=0.5, seed=4)


def test_iid_sizes_are_balanced():
    sizes = [len(p) for p in partition(603, 8, "iid")]
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_skew_grows_as_alpha_shrinks():
    labels = _labels(2000)
    skew = {a: label_skew(labels, partition(labels, 8, "dirichlet", a, seed=0))
            for a in (0.1, 0.5, 100.0)}  # fmt: skip
    iid = label_skew(labels, partition(labels, 8, "iid", seed=0))
    assert skew[0.1] > skew[0.5] > skew[100.0]
    assert skew[0.5] > 3 * iid  # alpha 0.5 is clearly non-IID
    assert skew[100.0] < 0.15  # large alpha tends to IID


def test_unlabeled_data_is_iid_and_bad_input_is_refused():
    assert sorted(i for p in partition(10, 3, "dirichlet") for i in p) == list(range(10))
    with pytest.raises(EdgetuneError, match="cannot be split"):
        partition(3, 4)
    with pytest.raises(EdgetuneError, match="unknown partition"):
        partition(10, 2, "shards")
    with pytest.raises(EdgetuneError, match="alpha"):
        partition([0, 1] * 5, 2, "dirichlet", alpha=0)


def test_holdout_split():
    train, held = split_holdout(list(range(100, 150)), 0.1, seed=1)
    assert len(held) == 5 and not set(train) & set(held)
    assert sorted(train + held) == list(range(100, 150))
    assert [len(x) for x in split_holdout([7, 8], 0.1, 0)] == [1, 1]
