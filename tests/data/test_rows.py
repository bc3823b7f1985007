"""Bundled data sets as `Rows`: the same answers as a `datasets.Dataset` of the same rows, and a
training run's imports without `datasets`, pandas or pyarrow."""

import subprocess
import sys

from datasets import Dataset

from edgetune.data.registry import load_bundled
from edgetune.data.rows import Rows

ROWS = [{"text": f"row {i}", "label": "ab"[i % 2]} for i in range(23)]


def test_rows_answer_as_a_dataset_does():
    rows, ds = Rows(ROWS), Dataset.from_list(ROWS)
    assert len(rows) == len(ds) and rows.column_names == ds.column_names
    assert rows[3] == ds[3] and rows["label"] == ds["label"]
    assert rows[2:7] == ds[2:7]
    assert list(rows.shuffle(seed=0)) == list(ds.shuffle(seed=0))
    assert list(rows.shuffle(seed=0).select(range(5))) == list(ds.shuffle(seed=0).select(range(5)))


def test_a_missing_column_is_none_as_in_a_dataset():
    rows = [{"text": "a", "target": "b"}, {"text": "c"}]
    assert list(Rows(rows)) == list(Dataset.from_list(rows))


def test_bundled_sets_load_as_rows():
    data = load_bundled("reuters-r8")
    assert set(data) == {"train", "validation", "test"}
    assert all(isinstance(s, Rows) and len(s) > 0 for s in data.values())
    assert set(data["train"].column_names) == {"text", "label"}


def test_a_run_on_bundled_data_does_not_import_datasets():
    code = (
        "import sys\n"
        "from edgetune.config import DataConfig\n"
        "from edgetune.data.load import load_data\n"
        "import edgetune.train\n"
        "load_data(DataConfig(name='brown'))\n"
        "print(sorted(m for m in ('datasets', 'pandas', 'pyarrow') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
