"""User data files (JSONL, CSV, Parquet) loaded through the `datasets` library.

A single file is split 80/10/10 into train/validation/test by a seeded permutation (seed 0).
A folder holding `train.*` (and optionally `validation.*`, `test.*`) files uses those splits
(`dev`, `valid` and `val` name the validation split too; any other data file in the folder is
refused by name); a missing validation split is cut from train as above, a missing test split
reuses validation. A `.json` file holds either one JSON object per line or one array of
objects (a `.jsonl` file: one object per line). Columns are renamed to edgetune's: `text`,
`label` (classify), `target` (summarize, chat).
"""

from __future__ import annotations

import json
from pathlib import Path

from datasets import Dataset, DatasetDict, Value
from datasets import load_dataset as hf_load_dataset

from edgetune.errors import EdgetuneError

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
SPLIT_NAMES = {"train": "train", "validation": "validation", "dev": "validation",
               "valid": "validation", "val": "validation", "test": "test"}  # fmt: skip


def load_files(path: Path, task: str, columns: dict[str, str]) -> DatasetDict:
    """Load a file or a folder of split files; `columns` maps edgetune names to the user's."""
    if path.is_dir():
        found: dict[str, Path] = {}
        for p in sorted(path.iterdir()):
            if p.suffix.lower() not in FORMATS:
                continue
            split = SPLIT_NAMES.get(p.stem.lower())
            if split is None:
                raise EdgetuneError(
                    f"{p}: name a data folder's files train, validation (or dev) and test"
                )
            if split in found:
                raise EdgetuneError(
                    f"{path} holds two {split} files: {found[split].name}, {p.name}"
                )
            found[split] = p
        if "train" not in found:
            raise EdgetuneError(f"{path} has no train.jsonl/.json/.csv/.parquet file")
        splits = {s: _read(f) for s, f in found.items()}
    else:
        splits = _split(_read(path))
    if "validation" not in splits:
        splits.update(_split(splits["train"], test=False))
    splits.setdefault("test", splits["validation"])
    return DatasetDict(
        {s: _columns(ds, task, columns, f"{path} ({s})") for s, ds in splits.items()}
    )


def _read(path: Path) -> Dataset:
    if not path.exists():
        raise EdgetuneError(f"data file not found: {path}")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise EdgetuneError(f"{path}: unknown format; use .jsonl, .csv or .parquet")
    if path.stat().st_size == 0:
        raise EdgetuneError(f"{path} holds no rows")
    if fmt == "json":
        _check_json(path)
    try:
        ds = hf_load_dataset(fmt, data_files=str(path), split="train")
    except Exception as e:  # datasets wraps parser errors in several types
        cause = e.__cause__ or e
        raise EdgetuneError(f"cannot read {path} as {fmt}: {str(cause).splitlines()[0]}") from None
    if len(ds) == 0:
        raise EdgetuneError(f"{path} holds no rows")
    return ds


def _check_json(path: Path) -> None:
    """A JSON array of objects, or JSON Lines with the first bad line named (datasets' own
    error does not name it)."""
    with path.open(encoding="utf-8", errors="replace") as f:
        head = f.read(4096).lstrip()
    if path.suffix.lower() == ".json" and head.startswith("["):
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise EdgetuneError(f"{path} is not valid JSON: {e}") from None
        if not rows or not all(isinstance(r, dict) for r in rows):
            raise EdgetuneError(f"{path}: a JSON array of data must hold objects, one per row")
        return
    rows = 0
    with path.open(encoding="utf-8", errors="strict") as f:
        try:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                rows += 1
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise EdgetuneError(
                        f"{path}: line {number} is not valid JSON ({e.msg})"
                    ) from None
                if not isinstance(row, dict):
                    raise EdgetuneError(f"{path}: line {number} is not a JSON object")
        except UnicodeDecodeError:
            raise EdgetuneError(f"{path} is not UTF-8 text") from None
    if rows == 0:
        raise EdgetuneError(f"{path} holds no rows")


def _split(ds: Dataset, test: bool = True) -> dict[str, Dataset]:
    if len(ds) < 10:
        raise EdgetuneError(
            f"only {len(ds)} rows: at least 10 are needed to split off held-out data"
        )
    ds = ds.shuffle(seed=0)
    n = len(ds)
    n_val = max(1, n // 10)
    if not test:
        return {"train": ds.select(range(n_val, n)), "validation": ds.select(range(n_val))}
    return {
        "validation": ds.select(range(n_val)),
        "test": ds.select(range(n_val, 2 * n_val)),
        "train": ds.select(range(2 * n_val, n)),
    }


def _columns(ds: Dataset, task: str, columns: dict[str, str], where: str) -> Dataset:
    wanted = ["text"] + (["label"] if task == "classify" else [])
    wanted += ["target"] if task in ("summarize", "chat") else []
    rename = {}
    for ours in wanted:
        theirs = columns.get(ours, ours)
        if theirs not in ds.column_names:
            raise EdgetuneError(
                f"{where} has no column {theirs!r} (for {ours}); its columns are "
                f"{', '.join(ds.column_names)}; pick one with --{ours}-column"
            )
        rename[theirs] = ours
    ds = ds.select_columns(list(rename)).rename_columns({k: v for k, v in rename.items() if k != v})
    if task == "classify":  # labels are class names, whatever type the file gave them
        ds = ds.cast_column("label", Value("string"))
    return ds
