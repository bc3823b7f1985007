"""Data: bundled splits, user files, tokenization and batching."""

import json

import pytest

from edgetune.config import DataConfig
from edgetune.data.load import load_data
from edgetune.data.registry import DATASETS
from edgetune.data.tasks import IGNORE, collate, epoch_order
from edgetune.errors import EdgetuneError


def test_reuters_r8_has_the_published_split():
    data = load_data(DataConfig(name="reuters-r8"))
    assert data.task == "classify"
    assert len(data.splits["test"]) == 2189
    assert len(data.splits["train"]) + len(data.splits["validation"]) == 5485
    assert len(data.labels) == 8


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_bundled_set_has_nonempty_fixed_splits(name):
    first = load_data(DataConfig(name=name))
    again = load_data(DataConfig(name=name))
    for split in ("train", "validation", "test"):
        assert len(first.splits[split]) > 0
        assert first.splits[split][0] == again.splits[split][0]
    assert first.task == DATASETS[name].task


def test_email_subjects_pairs_body_with_subject():
    row = load_data(DataConfig(name="email-subjects")).splits["train"][0]
    assert row["target"] and len(row["text"].split()) >= 20
    assert not row["target"].lower().startswith("re:")


def test_jsonl_with_custom_columns(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"body": f"text {i}", "tag": i % 2} for i in range(50)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_data(
        DataConfig(name=str(path), task="classify", text_column="body", label_column="tag")
    )
    assert data.labels == ["0", "1"]
    assert sum(len(d) for d in data.splits.values()) == 50
    assert set(data.splits["train"].column_names) == {"text", "label"}


def test_csv_and_parquet(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"text": [f"doc {i}" for i in range(30)], "target": ["t"] * 30})
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_parquet(tmp_path / "d.parquet")
    for name in ("d.csv", "d.parquet"):
        data = load_data(DataConfig(name=str(tmp_path / name), task="summarize"))
        assert len(data.splits["train"]) == 24


def test_folder_of_split_files(tmp_path):
    for split, n in (("train", 20), ("test", 5)):
        (tmp_path / f"{split}.jsonl").write_text(
            "".join(
                json.dumps({"text": f"{split} {i}", "label": "ab"[i % 2]}) + "\n" for i in range(n)
            )
        )
    data = load_data(DataConfig(name=str(tmp_path), task="classify"))
    assert len(data.splits["test"]) == 5
    assert len(data.splits["train"]) + len(data.splits["validation"]) == 20


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "a", "label": "x"}\n{"text": "b", "label":\n', "line 2 is not valid JSON"),
        ('["not", "an", "object"]\n', "line 1 is not a JSON object"),
        ("", "holds no rows"),
    ],
)
def test_bad_jsonl_is_named(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(EdgetuneError, match=message):
        load_data(DataConfig(name=str(path), task="classify"))


def test_unknown_column_lists_the_real_ones(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"body": str(i), "label": "a"}) + "\n" for i in range(20)))
    with pytest.raises(EdgetuneError, match="no column 'text'.*body, label"):
        load_data(DataConfig(name=str(path), task="classify"))


def test_label_only_in_test_is_refused(tmp_path):
    (tmp_path / "train.jsonl").write_text(
        "".join(json.dumps({"text": str(i), "label": "ab"[i % 2]}) + "\n" for i in range(20))
    )
    (tmp_path / "test.jsonl").write_text(json.dumps({"text": "z", "label": "zebra"}) + "\n")
    with pytest.raises(EdgetuneError, match="labels that train never saw: zebra"):
        load_data(DataConfig(name=str(tmp_path), task="classify"))


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(EdgetuneError, match="no such file"):
        load_data(DataConfig(name="nope.jsonl", task="classify"))
    with pytest.raises(EdgetuneError, match="say which task"):
        load_data(DataConfig(name=str(tmp_path / "x.jsonl")))


def test_collate_pads_and_masks_lm_labels():
    batch = collate([{"input_ids": [5, 6, 7]}, {"input_ids": [8]}], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [8, IGNORE, IGNORE]]


def test_epoch_order_is_a_function_of_seed_and_epoch():
    assert epoch_order(50, 3, 1) == epoch_order(50, 3, 1)
    assert epoch_order(50, 3, 1) != epoch_order(50, 3, 2)
    assert sorted(epoch_order(50, 3, 1)) == list(range(50))


def test_a_json_array_file_is_read(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"text": f"text {i}", "label": f"c{i % 2}"} for i in range(40)]))
    data = load_data(DataConfig(name=str(path), task="classify"))
    assert sum(len(s) for s in data.splits.values()) == 40 and data.labels == ["c0", "c1"]
    (tmp_path / "bad.json").write_text("[1, 2, 3]")
    with pytest.raises(EdgetuneError, match="must hold objects"):
        load_data(DataConfig(name=str(tmp_path / "bad.json"), task="classify"))


def test_dev_files_are_the_validation_split_and_strays_are_named(tmp_path):
    rows = [{"text": f"text {i}", "label": f"c{i % 2}"} for i in range(30)]
    for name, part in (("train.jsonl", rows), ("dev.jsonl", rows[:6]), ("test.jsonl", rows[:4])):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in part))
    data = load_data(DataConfig(name=str(tmp_path), task="classify"))
    assert [len(data.splits[s]) for s in ("train", "validation", "test")] == [30, 6, 4]
    (tmp_path / "holdout.jsonl").write_text(json.dumps(rows[0]) + "\n")
    with pytest.raises(EdgetuneError, match="holdout.jsonl: name a data folder's files"):
        load_data(DataConfig(name=str(tmp_path), task="classify"))


def test_the_task_is_checked_before_any_file_is_read(tmp_path):
    with pytest.raises(EdgetuneError, match="unknown task 'translate'"):
        DataConfig(name=str(tmp_path / "missing.jsonl"), task="translate")


def test_eval_samples_of_lm_count_blocks_not_documents(tiny_llama, tmp_path):
    """A few long documents are many blocks: `eval_samples` caps the blocks evaluated."""
    from edgetune.config import load_config
    from edgetune.pipeline import load

    docs = [{"text": " ".join(f"word{j}" for j in range(600))} for _ in range(30)]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    cfg = load_config(
        None,
        {
            "model.name": str(tiny_llama),
            "data.name": str(path),
            "data.task": "lm",
            "data.seq_len": 32,
            "data.eval_samples": 5,
        },
    )
    session = load(cfg)
    assert len(session.data.splits["validation"]) == 5
    assert len(session.data.splits["test"]) == 5
    assert len(session.data.splits["train"]) > 100  # the training split is not capped
