"""User data files (JSONL, CSV, Parquet) and data folders loaded through the `datasets` library.

A single file is split 80/10/10 into train/validation/test by a seeded permutation (seed 0).
A folder holding `train.*` (and optionally `validation.*`, `test.*`) files uses those splits
(`dev`, `valid` and `val` name the validation split too; any other data file in the folder is
refused by name); so does a folder whose `data/` holds them, or the hub's shards of them
(`data/train-00000-of-00002.parquet`, ...). A folder written by `save_to_disk` is read with
`datasets.load_from_disk`: a `DatasetDict` gives its splits, a `Dataset` is split as a file.
A missing validation split is cut from train as above, a missing test split reuses
validation. A `.json` file holds either one JSON object per line or one array of
objects (a `.jsonl` file: one object per line). Columns are renamed to edgetune's: `text`,
`label` (classify), `target` (summarize); chat rows become `messages` (`edgetune.data.chat`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from datasets import Dataset, DatasetDict, Value, load_from_disk
from datasets import load_dataset as hf_load_dataset

from edgetune.data.chat import to_messages
from edgetune.errors import EdgetuneError

SHARD = re.compile(r"^([A-Za-z]+)-\d+-of-\d+")  # the hub's shards: train-00000-of-00002[-hash]
FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
SPLIT_NAMES = {"train": "train", "validation": "validation", "dev": "validation",
               "valid": "validation", "val": "validation", "test": "test"}  # fmt: skip


def load_files(path: Path, task: str, columns: dict[str, str]) -> DatasetDict:
    """Load a file or a folder of split files; `columns` maps edgetune names to the user's."""
    splits = _folder(path) if path.is_dir() else _split(_read([path]))
    if "validation" not in splits:
        splits.update(_split(splits["train"], test=False))
    splits.setdefault("test", splits["validation"])
    return DatasetDict(
        {s: _columns(ds, task, columns, f"{path} ({s})") for s, ds in splits.items()}
    )


def _folder(path: Path) -> dict[str, Dataset]:
    """The splits of a `save_to_disk` folder, or of the split files in `path` (else in
    `path/data`, the hub's layout)."""
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return _saved(path)
    root = path / "data" if not _data_files(path) and (path / "data").is_dir() else path
    found: dict[str, list[Path]] = {}
    for p in _data_files(root):
        shard = SHARD.match(p.stem)
        split = SPLIT_NAMES.get((shard.group(1) if shard else p.stem).lower())
        if split is None:
            raise EdgetuneError(
                f"{p}: name a data folder's files train, validation (or dev) and test "
                "(or train-00000-of-00002 and so on)"
            )
        if found.get(split) and not (shard and SHARD.match(found[split][0].stem)):
            raise EdgetuneError(f"{root} holds two {split} files: {found[split][0].name}, {p.name}")
        found.setdefault(split, []).append(p)
    if "train" not in found:
        raise EdgetuneError(
            f"{path} is not a data folder: it has no train.jsonl/.json/.csv/.parquet file, no "
            "data/train-*.parquet shards and no datasets save_to_disk files"
        )
    return {s: _read(f) for s, f in found.items()}


def _data_files(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.iterdir()) if p.suffix.lower() in FORMATS and p.is_file()]


def _saved(path: Path) -> dict[str, Dataset]:
    """A folder written by `Dataset.save_to_disk` (split 80/10/10) or by
    `DatasetDict.save_to_disk` (its train, validation and test splits)."""
    try:
        saved = load_from_disk(str(path))
    except Exception as e:  # datasets raises several types for a damaged folder
        raise EdgetuneError(
            f"cannot read {path} as a datasets folder: {str(e).splitlines()[0]}"
        ) from None
    if isinstance(saved, Dataset):
        return _split(saved)
    unknown = [s for s in saved if s.lower() not in SPLIT_NAMES]
    if unknown or "train" not in saved:
        raise EdgetuneError(
            f"{path} holds the splits {', '.join(saved)}; edgetune reads train, validation (or "
            "dev) and test"
        )
    return {SPLIT_NAMES[s.lower()]: ds for s, ds in saved.items()}


def _read(paths: list[Path]) -> Dataset:
    """One split from its file, or from its shards (of one format)."""
    path = paths[0]
    fmt = FORMATS.get(path.suffix.lower())
    for p in paths:
        if not p.exists():
            raise EdgetuneError(f"data file not found: {p}")
        if FORMATS.get(p.suffix.lower()) != fmt or fmt is None:
            raise EdgetuneError(f"{p}: unknown format; use .jsonl, .csv or .parquet")
        if p.stat().st_size == 0:
            raise EdgetuneError(f"{p} holds no rows")
        if fmt == "json":
            _check_json(p)
    try:
        ds = hf_load_dataset(fmt, data_files=[str(p) for p in paths], split="train")
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
    if task == "chat":
        return to_messages(ds, columns, where)
    wanted = ["text"] + (["label"] if task == "classify" else [])
    wanted += ["target"] if task == "summarize" else []
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
