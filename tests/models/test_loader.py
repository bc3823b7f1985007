"""Model registry and loading: every spec builds offline, sources resolve, errors are clear."""

import pytest
import torch
from transformers import AutoModel

from edgetune.errors import EdgetuneError
from edgetune.models.loader import load_model
from edgetune.models.registry import SPECS, get_spec

# published parameter counts of the bare models (no task head), in millions
PUBLISHED = {
    "minilm-l6": 22.7,
    "smollm2-135m": 134.5,
    "distilbert": 66.4,
    "tinybert": 14.4,
    "albert-base": 11.7,
    "bert-base": 109.5,
    "t5-small": 60.5,
    "gpt2": 124.4,
    "qwen2.5-0.5b": 494.0,  # tied LM heads: the bare model is the whole
    "qwen3-0.6b": 596.0,
    "gemma3-270m": 268.1,
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_spec_builds_without_network(name):
    with torch.device("meta"):
        model = AutoModel.from_config(get_spec(name).config())
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert params > 1
    if name in PUBLISHED:
        assert params == pytest.approx(PUBLISHED[name], abs=0.1)


def test_unknown_names_are_refused():
    with pytest.raises(EdgetuneError, match="unknown model"):
        get_spec("gpt-17")
    with pytest.raises(EdgetuneError, match="unknown task"):
        load_model("minilm-l6", "translate")


def test_random_init_is_seeded_and_fits_the_tokenizer():
    a = load_model("albert-base", "classify", num_labels=3, random_init=True, seed=1)
    b = load_model("albert-base", "classify", num_labels=3, random_init=True, seed=1)
    assert a.source == "random-init"
    assert a.model.config.vocab_size >= len(a.tokenizer)  # stand-in tokenizer fits
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters(), strict=True):
        assert torch.equal(p, q), n


def test_encoder_cannot_do_lm():
    with pytest.raises(EdgetuneError, match="needs a decoder"):
        load_model("tinybert", "lm", random_init=True)


def test_local_folder_and_not_a_model_folder(tiny_llama, tmp_path):
    loaded = load_model(str(tiny_llama), "lm")
    assert loaded.source == "local" and loaded.kind == "decoder"
    with pytest.raises(EdgetuneError, match="not a model folder"):
        load_model(str(tmp_path), "lm")
