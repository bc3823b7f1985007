"""Label words through the config (`data.label_words`, `data.prompt`): a masked LM (BERT) and a
causal LM (Llama) classify by their LM head's logits of the words at the prompt's {mask}, and
every method trains them."""

from __future__ import annotations

import copy

import pytest
import torch

from edgetune import pipeline
from edgetune.config import load_config
from edgetune.data.tasks import collate
from edgetune.errors import EdgetuneError
from edgetune.methods import METHODS
from edgetune.methods.label_words import LabelWords

WORDS = "{sports: sport, finance: money, weather: rain, food: food}"


def _session(model_dir, data, *more):
    overrides = [f"model.name={model_dir}", f"data.name={data}", "data.task=classify",
                 "data.seq_len=12", f"data.label_words={WORDS}", "data.eval_samples=8",
                 "data.prompt={text} Topic: {mask}.", "train.batch_size=4", *more]  # fmt: skip
    return pipeline.load(load_config(None, overrides))


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_label_words_score_the_words_at_the_mask(kind, tiny_bert, tiny_llama, topics_jsonl):
    s = _session(tiny_bert if kind == "bert" else tiny_llama, topics_jsonl)
    model, tok = s.model, s.loaded.tokenizer
    assert isinstance(model, LabelWords)
    ends = {"bert": f" Topic: {tok.mask_token}.", "llama": " Topic:"}[kind]
    tail = tok(ends, add_special_tokens=False)["input_ids"]
    for ex in s.data.splits["train"][:20]:
        ids = ex["input_ids"].tolist()
        assert len(ids) <= 12
        body = ids[1:-1] if kind == "bert" else ids  # [CLS] ... [SEP]
        assert body[-len(tail) :] == tail  # the prompt's end survives truncation
    expected = {"bert": ["sport", "money", "rain", "food"],
                "llama": [" sport", " money", " rain", " food"]}[kind]  # fmt: skip
    ordered = [dict(zip(["sports", "finance", "weather", "food"], expected, strict=True))[n]
               for n in s.data.labels]  # fmt: skip
    assert s.data.word_ids == [tok(w, add_special_tokens=False)["input_ids"][0] for w in ordered]
    batch = collate(s.data.splits["train"][:4], s.pad_id)
    model.eval()
    with torch.no_grad():
        got = model(**batch).logits
        lm = model._lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    if kind == "bert":
        at = (batch["input_ids"] == tok.mask_token_id).int().argmax(1)
    else:
        at = batch["attention_mask"].sum(1) - 1
    torch.testing.assert_close(got, lm.logits[torch.arange(4), at][:, s.data.word_ids])


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_through_label_words(method, tiny_bert, topics_jsonl):
    s = _session(tiny_bert, topics_jsonl, f"train.method={method}", "train.lr=1e-2")
    m = s.build_method(copy.deepcopy(s.model))
    batch = collate(s.data.splits["train"][:4], s.pad_id)
    before = {k: v.clone() for k, v in m.trainable_state().items()}
    result = m.step([batch])
    assert torch.isfinite(torch.tensor(result.loss))
    after = m.trainable_state()
    assert any(not torch.equal(after[k], before[k]) for k in after)
    if method == "lora":  # the LM head is the model's own: it stays frozen
        assert not any("cls" in k for k in after)


def test_label_word_mistakes_are_reported(tiny_llama, topics_jsonl):
    with pytest.raises(EdgetuneError, match="no word for class"):
        _session(tiny_llama, topics_jsonl, "data.label_words={sports: sport, food: food}")
    with pytest.raises(EdgetuneError, match="first token"):
        clash = "{sports: sport, finance: sport-x, weather: rain, food: food}"
        _session(tiny_llama, topics_jsonl, f"data.label_words={clash}")
    with pytest.raises(EdgetuneError, match="mask"):
        load_config(None, ["data.prompt={text} Topic:"])
    with pytest.raises(EdgetuneError, match="mapping"):
        load_config(None, ["data.label_words=sport"])
