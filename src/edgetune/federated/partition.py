"""Split a training set among federated clients, seeded: IID or non-IID by Dirichlet(alpha).

IID: one shuffled order cut into `n` near-equal slices. Dirichlet (Hsu et al. 2019, "Measuring
the effects of non-identical data distribution"): for every class c, proportions p_c ~ Dir(alpha
* 1_n) split that class's rows among the n clients; small alpha gives each client few classes,
large alpha tends to IID. Classes are cut with their proportions, then any client left empty
takes one row from the largest client, so every client trains. Tasks without labels (lm,
summarize) are partitioned IID.

Every partition is disjoint and covers all rows, and is a pure function of (labels, n, seed).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgetune.config import PARTITIONS as SCHEMES
from edgetune.errors import EdgetuneError


def partition(
    labels: Sequence[int] | int, n: int, scheme: str = "iid", alpha: float = 0.5, seed: int = 0
) -> list[list[int]]:
    """Row indices of each of `n` clients. `labels` is a label per row, or a row count for
    unlabeled data (always IID)."""
    rows = labels if isinstance(labels, int) else len(labels)
    if n < 1:
        raise EdgetuneError(f"the number of clients must be at least 1, got {n}")
    if rows < n:
        raise EdgetuneError(f"{rows} training rows cannot be split among {n} clients")
    if scheme not in SCHEMES:
        raise EdgetuneError(f"unknown partition {scheme!r}; choose from {', '.join(SCHEMES)}")
    rng = np.random.default_rng(seed)
    if scheme == "iid" or isinstance(labels, int):
        order = rng.permutation(rows)
        return [sorted(part.tolist()) for part in np.array_split(order, n)]
    if not alpha > 0:
        raise EdgetuneError(f"the Dirichlet alpha must be positive, got {alpha}")
    return _dirichlet(np.asarray(labels), n, alpha, rng)


def _dirichlet(labels: np.ndarray, n: int, alpha: float, rng: np.random.Generator):
    parts: list[list[int]] = [[] for _ in range(n)]
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        share = rng.dirichlet(np.full(n, alpha))
        cuts = (np.cumsum(share)[:-1] * len(rows)).round().astype(int)
        for client, piece in enumerate(np.split(rows, cuts)):
            parts[client] += piece.tolist()
    for client in range(n):  # nobody is left without data
        if not parts[client]:
            donor = max(range(n), key=lambda k: len(parts[k]))
            parts[client].append(parts[donor].pop())
    return [sorted(p) for p in parts]


def label_skew(labels: Sequence[int], parts: Sequence[Sequence[int]]) -> float:
    """Mean total-variation distance between each client's label distribution and the global
    one: 0 for identical distributions, near 1 when each client holds other classes."""
    y = np.asarray(labels)
    classes = np.unique(y)
    overall = np.array([(y == c).mean() for c in classes])
    dists = []
    for part in parts:
        mine = y[np.asarray(part, dtype=int)]
        local = np.array([(mine == c).mean() for c in classes])
        dists.append(0.5 * np.abs(local - overall).sum())
    return float(np.mean(dists))


def split_holdout(rows: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A client's own (train, held-out) rows: the last `fraction` of a seeded shuffle, at least
    one row each side when there are two or more rows."""
    order = np.random.default_rng(seed).permutation(np.asarray(rows, dtype=int))
    k = int(round(len(order) * fraction))
    if fraction > 0 and len(order) >= 2:
        k = min(max(1, k), len(order) - 1)
    cut = len(order) - k
    return sorted(order[:cut].tolist()), sorted(order[cut:].tolist())
