"""Chat data: the three row forms, the label mask against the template token by token, every
cut counted, and data folders (`save_to_disk`, the hub's parquet layout)."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset, DatasetDict
from transformers import AutoTokenizer

from edgetune.config import DataConfig
from edgetune.data import chat
from edgetune.data.chat import IGNORE, Cuts
from edgetune.data.load import load_data
from edgetune.data.tasks import tokenize
from edgetune.errors import EdgetuneError

TALK = [
    {"role": "system", "content": "You keep the shopping list. Repeat it after each change."},
    {"role": "user", "content": "Add eggs to my list."},
    {"role": "assistant", "content": "Added eggs. Your list: eggs."},
    {"role": "user", "content": "I need milk, and also some bread for the weekend."},
    {"role": "assistant", "content": "Added milk and bread. Your list: eggs, milk, bread."},
    {"role": "user", "content": "What is on my list?"},
    {"role": "assistant", "content": "3 items: eggs, milk, bread."},
]


@pytest.fixture(scope="module")
def tok(tiny_llama):
    """SmolLM2's tokenizer and ChatML template (from the bundled GGUF, via the tiny model)."""
    return AutoTokenizer.from_pretrained(tiny_llama)


def _chatml(tok, messages) -> tuple[list[int], list[int]]:
    """Reference: each turn written by hand as ChatML (`<|im_start|>role\\ncontent<|im_end|>\\n`)
    and tokenized on its own; labels are an assistant turn's tokens after its header."""
    ids: list[int] = []
    labels: list[int] = []
    for m in messages:
        head = tok(f"<|im_start|>{m['role']}\n", add_special_tokens=False)["input_ids"]
        body = tok(f"{m['content']}<|im_end|>\n", add_special_tokens=False)["input_ids"]
        ids += head + body
        scored = body if m["role"] == "assistant" else [IGNORE] * len(body)
        labels += [IGNORE] * len(head) + scored
    return ids, labels


def test_the_label_mask_matches_the_template_token_by_token(tok):
    # Prepare: the template itself, and a hand-written ChatML reference
    templated = tok.apply_chat_template(TALK, tokenize=True, return_dict=True)["input_ids"]
    ref_ids, ref_labels = _chatml(tok, TALK)
    # Execute
    ex = chat.example(TALK, tok, 512, None, cuts := Cuts())
    # Assert: the template's tokens exactly, and the loss on all three answers (end-of-turn
    # included) and nothing else
    assert ex is not None
    assert ex["input_ids"] == list(templated) == ref_ids
    assert ex["labels"] == ref_labels
    scored = [t for t in ex["labels"] if t != IGNORE]
    answers = "".join(f"{m['content']}<|im_end|>\n" for m in TALK if m["role"] == "assistant")
    assert tok.decode(scored) == answers
    assert cuts == Cuts(examples=1)


def test_the_template_s_own_system_prompt_is_never_scored(tok):
    talk = TALK[1:3]  # no system turn: SmolLM2's template writes its default one
    ex = chat.example(talk, tok, 512, None, Cuts())
    text = tok.decode(ex["input_ids"])
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    scored = [t for t in ex["labels"] if t != IGNORE]
    assert tok.decode(scored) == f"{talk[1]['content']}<|im_end|>\n"


def test_a_long_conversation_keeps_whole_turns_and_counts_the_rest(tok):
    full, _ = _chatml(tok, TALK)
    first_two, first_two_labels = _chatml(tok, TALK[:5])
    cuts = Cuts()
    ex = chat.example(TALK, tok, len(first_two) + 3, None, cuts)
    assert ex["input_ids"] == first_two and ex["labels"] == first_two_labels
    last = _chatml(tok, TALK[5:])[1]
    assert cuts == Cuts(examples=1, cut=1, tokens=len(full) - len(first_two),
                        answer_tokens=sum(t != IGNORE for t in last))  # fmt: skip


def test_a_long_prompt_loses_user_content_from_its_start_not_the_template(tok):
    # Prepare: one exchange whose user turn is long and ends with the instruction
    talk = [{"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "word " * 60 + "Which topic is this?"},
            {"role": "assistant", "content": "grain"}]  # fmt: skip
    whole = chat.example(talk, tok, 512, None, Cuts())
    seq_len = len(whole["input_ids"]) - 40
    # Execute
    ex = chat.example(talk, tok, seq_len, None, cuts := Cuts())
    # Assert: 40 content tokens gone, every template token and the instruction still there
    text = tok.decode(ex["input_ids"])
    assert len(ex["input_ids"]) == seq_len
    assert text.startswith("<|im_start|>system\nAnswer in one word.<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("Which topic is this?<|im_end|>\n<|im_start|>assistant\ngrain<|im_end|>\n")
    assert tok.decode([t for t in ex["labels"] if t != IGNORE]) == "grain<|im_end|>\n"
    assert cuts == Cuts(examples=1, cut=1, tokens=40, answer_tokens=0)


def test_target_len_cuts_an_answer_and_ends_the_example_there(tok):
    ex = chat.example(TALK, tok, 512, 4, cuts := Cuts())
    scored = [t for t in ex["labels"] if t != IGNORE]
    first = tok(TALK[2]["content"], add_special_tokens=False)["input_ids"]
    assert scored == first[:4] and ex["input_ids"][-4:] == first[:4]  # no <|im_end|> to learn
    assert cuts.cut == 1 and cuts.answer_tokens > len(first) - 4


def test_an_answer_that_cannot_fit_is_dropped_and_an_empty_split_is_refused(tok, tmp_path):
    long = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "yes " * 80}]
    assert chat.example(long, tok, 64, None, cuts := Cuts()) is None
    assert cuts == Cuts(examples=1, dropped=1)
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps({"messages": long}) + "\n" for _ in range(12)))
    cfg = DataConfig(name=str(path), task="chat", seq_len=64)
    with pytest.raises(EdgetuneError, match="example fits data.seq_len 64 .1 dropped"):
        tokenize(load_data(cfg), tok, cfg, "decoder")


def test_an_evaluation_prompt_drops_early_turns_and_keeps_the_template(tok):
    whole = chat.prompt_ids(tok, TALK, 10_000)
    assert tok.decode(whole) == chat.render(tok, TALK[:-1], generation=True)
    short = chat.prompt_ids(tok, TALK, 40)
    text = tok.decode(short)
    assert len(short) <= 40 < len(whole)
    assert text.startswith(f"<|im_start|>system\n{TALK[0]['content']}<|im_end|>\n")
    assert text.endswith("<|im_start|>user\nWhat is on my list?<|im_end|>\n<|im_start|>assistant\n")


def test_the_three_row_forms_become_the_same_messages(tmp_path):
    pairs = [("What is 2+2?", "4"), ("Convert 2 km to m.", "2000 m")] * 6
    forms = {
        "messages": [{"messages": [{"role": "user", "content": p},
                                   {"role": "assistant", "content": c}]} for p, c in pairs],
        "prompt": [{"prompt": p, "completion": c} for p, c in pairs],
        "trl": [{"prompt": [{"role": "user", "content": p}],
                 "completion": [{"role": "assistant", "content": c}]} for p, c in pairs],
        "pairs": [{"question": p, "answer": c, "extra": 1} for p, c in pairs],
    }  # fmt: skip
    seen = []
    for name, rows in forms.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        cfg = DataConfig(name=str(path), task="chat", text_column="question",
                         target_column="answer")  # fmt: skip
        data = load_data(cfg).splits
        assert data["train"].column_names == ["messages"]
        seen.append(sorted(json.dumps(m) for s in data.values() for m in s["messages"]))
    assert all(s == seen[0] for s in seen)


def test_a_bad_role_and_a_table_without_chat_columns_are_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    rows = [{"messages": [{"role": "human", "content": "hi"}]}] * 12
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(EdgetuneError, match=r"row 0: each message needs a role \(system, user"):
        load_data(DataConfig(name=str(path), task="chat"))
    path.write_text("".join(json.dumps({"q": "a"}) + "\n" for _ in range(12)))
    with pytest.raises(EdgetuneError, match="give a `messages` column, `prompt` and `completion`"):
        load_data(DataConfig(name=str(path), task="chat"))


def test_the_bundled_chat_set_is_multi_turn_with_system_prompts(tok):
    cfg = DataConfig(name="device-chat", seq_len=256)
    text = load_data(cfg)
    talks = text.splits["train"]["messages"]
    assert sum(m[0]["role"] == "system" for m in talks) > len(talks) // 2
    assert sum(sum(t["role"] == "assistant" for t in m) >= 2 for m in talks) > len(talks) * 0.8
    data = tokenize(text, tok, cfg, "decoder")
    assert data.cuts["train"] == Cuts(examples=len(talks))  # 256 tokens hold every one whole
    assert data.cut_lines(256) == []


# -- data folders ----------------------------------------------------------------------------

ROWS = [{"text": f"row {i} about {'grain' if i % 2 else 'ships'}",
         "label": "grain" if i % 2 else "ships"} for i in range(40)]  # fmt: skip


def test_a_save_to_disk_folder_is_read(tmp_path):
    DatasetDict({"train": Dataset.from_list(ROWS[:30]), "test": Dataset.from_list(ROWS[30:])}
                ).save_to_disk(str(tmp_path / "dict"))  # fmt: skip
    Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "one"))
    data = load_data(DataConfig(name=str(tmp_path / "dict"), task="classify")).splits
    assert len(data["test"]) == 10 and len(data["train"]) + len(data["validation"]) == 30
    one = load_data(DataConfig(name=str(tmp_path / "one"), task="classify")).splits
    assert {s: len(d) for s, d in one.items()} == {"train": 32, "validation": 4, "test": 4}


def test_the_hub_parquet_layout_is_read(tmp_path):
    (tmp_path / "data").mkdir()
    for i, part in enumerate((ROWS[:15], ROWS[15:30])):
        Dataset.from_list(part).to_parquet(str(tmp_path / f"data/train-0000{i}-of-00002.parquet"))
    Dataset.from_list(ROWS[30:]).to_parquet(str(tmp_path / "data/test-00000-of-00001.parquet"))
    (tmp_path / "README.md").write_text("a dataset card")
    data = load_data(DataConfig(name=str(tmp_path), task="classify")).splits
    assert len(data["train"]) + len(data["validation"]) == 30 and len(data["test"]) == 10


def test_a_folder_that_is_no_data_folder_is_named(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(EdgetuneError, match="is not a data folder: it has no train.jsonl"):
        load_data(DataConfig(name=str(tmp_path), task="classify"))
    DatasetDict({"train_sft": Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "sft"))
    with pytest.raises(EdgetuneError, match="holds the splits train_sft; edgetune reads train"):
        load_data(DataConfig(name=str(tmp_path / "sft"), task="classify"))
