"""Rows of a data set held as a list, for the bundled sets: a training run that reads them never
imports `datasets` (with pandas and pyarrow about 80 MiB of resident memory a process keeps to
its end). Sources that need `datasets` (files, folders, the hub) load through it and give its
`Dataset`; `Rows` answers the part of that interface the data layer uses, in the same way:
`len`, iteration, a row by index, a column by name, a slice as columns, `select` and a seeded
`shuffle` (the same permutation as `Dataset.shuffle(seed=...)`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeAlias, overload

import numpy as np

if TYPE_CHECKING:
    from datasets import Dataset

    Split: TypeAlias = "Rows | Dataset"  # one split's text rows, from either kind of source


def datasets_quiet() -> None:
    """`datasets` without its progress bars (edgetune shows its own); imported here, when a
    source needs it."""
    import datasets

    datasets.disable_progress_bars()


class Rows:
    """Rows (dicts) with the same columns, in order; a row without a column holds None there."""

    def __init__(self, rows: Iterable[dict[str, Any]]) -> None:
        self._rows = list(rows)
        names: dict[str, None] = {}
        for r in self._rows:
            names.update(dict.fromkeys(r))
        self.column_names = list(names)
        if any(len(r) != len(names) for r in self._rows):
            self._rows = [{n: r.get(n) for n in names} for r in self._rows]

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._rows)

    @overload
    def __getitem__(self, key: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, key: str | slice) -> Any: ...
    def __getitem__(self, key: int | str | slice) -> Any:
        if isinstance(key, str):
            if key not in self.column_names:
                raise KeyError(f"no column {key!r}; the columns are {self.column_names}")
            return [r[key] for r in self._rows]
        if isinstance(key, slice):  # as `Dataset`: the rows' columns
            part = self._rows[key]
            return {n: [r[n] for r in part] for n in self.column_names}
        return self._rows[key]

    def select(self, indices: Iterable[int]) -> Rows:
        out = Rows([])
        out._rows, out.column_names = [self._rows[i] for i in indices], self.column_names
        return out

    def shuffle(self, seed: int) -> Rows:
        return self.select(int(i) for i in np.random.default_rng(seed).permutation(len(self)))
