"""Resolve `data.name` (bundled name, file or folder, hub id) into text splits and a task."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgetune.config import DataConfig
from edgetune.data.chat import to_messages
from edgetune.data.registry import DATASETS, SPLITS, load_bundled
from edgetune.data.rows import datasets_quiet
from edgetune.errors import EdgetuneError

if TYPE_CHECKING:
    from edgetune.data.rows import Split


@dataclass
class TextData:
    """Text splits, their task and (classify) the class names of the full train split."""

    splits: dict[str, Split]  # `Rows` for the bundled sets, a `Dataset` from files or the hub
    task: str
    labels: list[str]


def load_data(cfg: DataConfig) -> TextData:
    """The train/validation/test text splits and the task they are for (validation and test
    cut to `eval_samples` rows, except for lm, whose examples are blocks of tokens: those are
    cut after tokenization)."""
    columns = {"text": cfg.text_column, "label": cfg.label_column, "target": cfg.target_column}
    if cfg.name in DATASETS:
        task = DATASETS[cfg.name].task
        if cfg.task and cfg.task != task:
            raise EdgetuneError(f"{cfg.name} is a {task} data set, not {cfg.task}")
        data = load_bundled(cfg.name)
        if task == "chat":  # rows of one form, as from files
            data = {s: to_messages(ds, {}, f"{cfg.name} ({s})") for s, ds in data.items()}
    else:
        if not cfg.task:
            raise EdgetuneError(
                f"say which task {cfg.name} is for: --task classify|lm|summarize|chat"
            )
        task = cfg.task
        path = Path(cfg.name)
        datasets_quiet()
        from edgetune.data.files import load_files  # imports `datasets`: only for files

        data = load_files(path, task, columns) if path.exists() else _hub(cfg.name, task, columns)
    labels = label_names(data) if task == "classify" else []
    if cfg.train_samples:
        data["train"] = (
            data["train"].shuffle(seed=0).select(range(min(cfg.train_samples, len(data["train"]))))
        )
    eval_samples = cfg.eval_samples
    if eval_samples and task != "lm":
        for split in ("validation", "test"):
            data[split] = data[split].select(range(min(eval_samples, len(data[split]))))
    for split in SPLITS:
        if len(data[split]) == 0:
            raise EdgetuneError(f"the {split} split of {cfg.name} is empty")
    return TextData(data, task, labels)


def label_names(data: dict[str, Split]) -> list[str]:
    """Sorted class names of the train split; held-out labels must all occur in train."""
    names = sorted(set(data["train"]["label"]))
    if len(names) < 2:
        raise EdgetuneError(f"classification needs at least 2 labels in train, found {names}")
    for split in ("validation", "test"):
        unseen = sorted(set(data[split]["label"]) - set(names))
        if unseen:
            raise EdgetuneError(
                f"the {split} split has labels that train never saw: {', '.join(unseen[:5])}"
            )
    return names


def _hub(name: str, task: str, columns: dict[str, str]) -> dict[str, Split]:
    looks_like_file = Path(name).suffix.lower() in (".jsonl", ".json", ".csv", ".parquet")
    if looks_like_file or "/" not in name:
        raise EdgetuneError(
            f"data {name!r} is not a bundled data set (see `edgetune data list`) "
            "and no such file exists"
        )
    import datasets

    from edgetune.data.files import _columns

    try:
        loaded = datasets.load_dataset(name)
    except Exception as e:  # the hub client raises many types; the message is what matters
        raise EdgetuneError(
            f"cannot load data set {name!r} from the hub: {str(e).splitlines()[0]}"
        ) from None
    if "train" not in loaded:
        raise EdgetuneError(f"hub data set {name} has no train split")
    split = loaded["train"].train_test_split(test_size=0.1, seed=0)
    out = {"train": split["train"], "validation": loaded.get("validation", split["test"])}
    out["test"] = loaded.get("test", out["validation"])
    return {s: _columns(ds, task, columns, f"{name} ({s})") for s, ds in out.items()}
