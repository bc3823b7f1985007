"""Parameter counts of the cost model equal sum(p.numel()) of the transformers models."""

import pytest

from edgetune.cost.shapes import NAMED_SHAPES, n_params, shape_from_config
from edgetune.errors import EdgetuneError

# (family config name in conftest, transformers classes and the head each corresponds to)
CLASSES = {
    "bert": [("BertModel", "none"), ("BertForMaskedLM", "lm"),
             ("BertForSequenceClassification", "classifier")],
    "distilbert": [("DistilBertModel", "none"), ("DistilBertForMaskedLM", "lm"),
                   ("DistilBertForSequenceClassification", "classifier")],
    "albert": [("AlbertModel", "none"), ("AlbertForMaskedLM", "lm"),
               ("AlbertForSequenceClassification", "classifier")],
    "gpt2": [("GPT2Model", "none"), ("GPT2LMHeadModel", "lm"),
             ("GPT2ForSequenceClassification", "classifier")],
    "llama-gqa": [("LlamaModel", "none"), ("LlamaForCausalLM", "lm"),
                  ("LlamaForSequenceClassification", "classifier")],
    "llama-tied": [("LlamaForCausalLM", "lm")],
    **{kind: [(f"{name}Model", "none"), (f"{name}ForCausalLM", "lm"),
              (f"{name}ForSequenceClassification", "classifier")]
       for kind, name in (("qwen2", "Qwen2"), ("qwen3", "Qwen3"), ("mistral", "Mistral"),
                          ("phi3", "Phi3"))},
    "gemma3": [("Gemma3TextModel", "none"), ("Gemma3ForCausalLM", "lm"),
               ("Gemma3TextForSequenceClassification", "classifier")],
    "t5": [("T5Model", "none"), ("T5ForConditionalGeneration", "lm")],
    "flan-t5-gated": [("T5Model", "none"), ("T5ForConditionalGeneration", "lm")],
}  # fmt: skip


@pytest.mark.parametrize("family", sorted(CLASSES))
def test_param_count_exact(tiny, family):
    import transformers

    cfg = tiny[family][0]
    shape = shape_from_config(cfg.to_dict())
    for cls_name, head in CLASSES[family]:
        model = getattr(transformers, cls_name)(cfg)
        assert n_params(shape, head) == sum(p.numel() for p in model.parameters()), cls_name


def test_param_count_longformer_and_untied_heads():
    import transformers as T

    cfg = T.LongformerConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=4, intermediate_size=64,
                             max_position_embeddings=40, attention_window=8)  # fmt: skip
    s = shape_from_config(cfg.to_dict())
    assert s.attn_window == 8 and s.global_proj
    for cls, head in [(T.LongformerModel, "none"), (T.LongformerForMaskedLM, "lm"),
                      (T.LongformerForSequenceClassification, "classifier")]:  # fmt: skip
        assert n_params(s, head) == sum(p.numel() for p in cls(cfg).parameters())
    cfg = T.LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=1,
        tie_word_embeddings=False,
    )
    s = shape_from_config(cfg.to_dict())
    assert (s.n_kv_heads, s.tied) == (1, False)
    assert n_params(s, "lm") == sum(p.numel() for p in T.LlamaForCausalLM(cfg).parameters())
    # tie_word_embeddings=False gives the LM head its own matrix in the other families too
    untied = [
        (T.GPT2Config(vocab_size=50, n_embd=32, n_layer=1, n_head=4, n_positions=40,
                      tie_word_embeddings=False), T.GPT2LMHeadModel),
        (T.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=40,
                      tie_word_embeddings=False), T.BertForMaskedLM),
        (T.DistilBertConfig(vocab_size=50, dim=32, n_layers=1, n_heads=4, hidden_dim=64,
                            max_position_embeddings=40, tie_word_embeddings=False),
         T.DistilBertForMaskedLM),
    ]  # fmt: skip
    for cfg, cls in untied:
        s = shape_from_config(cfg.to_dict())
        assert not s.tied
        assert n_params(s, "lm") == sum(p.numel() for p in cls(cfg).parameters()), cls.__name__


def test_registry_shapes_published_sizes():
    """Real-size counts against the published sizes of the checkpoints."""
    from edgetune.models.registry import get_spec

    def count(name, head="none"):
        return n_params(shape_from_config(get_spec(name).config().to_dict(), name), head)

    assert count("distilbert") == 66_362_880  # distilbert-base-uncased
    assert count("bert-base") == 109_482_240  # bert-base-uncased
    assert count("gpt2", "lm") == 124_439_808  # openai-community/gpt2
    assert count("smollm2-135m", "lm") == 134_515_008  # SmolLM2-135M
    assert count("t5-small", "lm") == 60_506_624  # google-t5/t5-small
    assert count("qwen2.5-0.5b", "lm") == 494_032_768  # Qwen/Qwen2.5-0.5B
    assert count("qwen3-0.6b", "lm") == 596_049_920  # Qwen/Qwen3-0.6B
    assert count("gemma3-270m", "lm") == 268_098_176  # google/gemma-3-270m
    assert count("phi3-mini", "lm") == 3_821_079_552  # microsoft/Phi-3-mini-4k-instruct
    assert count("mistral-7b", "lm") == 7_241_732_096  # mistralai/Mistral-7B-v0.1


def test_alexatm_named_shape():
    s = NAMED_SHAPES["alexatm-20b"]
    assert (s.n_layers, s.n_dec_layers, s.d_model, s.d_ff, s.vocab) == (
        46,
        32,
        4096,
        16384,
        150_000,
    )
    # 18.47 B from the published table; the paper reports 19.75 B (see docs/cost-model.md)
    assert n_params(s, "lm") == pytest.approx(18.47e9, rel=1e-3)


def test_every_model_type_training_supports_has_a_shape():
    """The forecast refuses no model that training supports: every `MODEL_TYPES` entry's
    default config has a shape; the ones no other test builds count their parameters exactly."""
    import transformers as T

    from edgetune.families import MODEL_TYPES

    for model_type in MODEL_TYPES:
        assert shape_from_config(T.AutoConfig.for_model(model_type).to_dict()).n_layers > 0
    small = [
        (T.XLMRobertaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1,
                            num_attention_heads=4, intermediate_size=64,
                            max_position_embeddings=40), T.XLMRobertaForMaskedLM, "lm"),
        (T.MT5Config(vocab_size=50, d_model=32, d_ff=64, d_kv=8, num_layers=1, num_heads=4),
         T.MT5ForConditionalGeneration, "lm"),
    ]  # fmt: skip
    for cfg, cls, head in small:
        n = n_params(shape_from_config(cfg.to_dict()), head)
        assert n == sum(p.numel() for p in cls(cfg).parameters()), cls.__name__


def test_unknown_family_is_a_clear_error():
    with pytest.raises(EdgetuneError, match="does not know model type 'mamba'"):
        shape_from_config({"model_type": "mamba"})
