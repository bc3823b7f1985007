"""GGUF export: a tiny random llama written at f16, q8_0 and its source's own types, read back
(gguf's reader, transformers' GGUF loader) and, where llama-cpp-python is installed, run in
llama.cpp against PyTorch."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from tiny import bpe_tokenizer, config
from transformers import LlamaForCausalLM

from edgetune.errors import EdgetuneError
from edgetune.export import export
from edgetune.export.gguf import file_figures, read_weights
from edgetune.export.source import RunModel, held_out, open_model
from edgetune.models.quantized import quantize

Q = gguf.GGMLQuantizationType


def _model(tmp_path: Path, tied: bool = False, name: str = "tiny") -> RunModel:
    tokenizer = bpe_tokenizer()
    torch.manual_seed(0)
    # head_dim 16, 4 heads over 2 KV heads; wider init so the top-1 token is seldom a near tie
    cfg = config("llama", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                 tie_word_embeddings=tied, initializer_range=0.2)  # fmt: skip
    net = LlamaForCausalLM(cfg).eval()
    return RunModel(name, net, tokenizer, "lm", None, None, None)


def _hand_rope_rows(w: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's row order written out: row 2j (2j+1) of a head is transformers' row j
    (j + d/2) of it."""
    d = w.shape[0] // heads
    order = [h * d + (j // 2 if j % 2 == 0 else d // 2 + j // 2)
             for h in range(heads) for j in range(d)]  # fmt: skip
    return w[order]


def _tensors(path: Path) -> dict:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def test_f16_file_holds_the_llama_metadata_tokenizer_and_rope_ordered_weights(tmp_path):
    m = _model(tmp_path)
    (path,) = export(m, "gguf", tmp_path, "f16").files
    reader = gguf.GGUFReader(path)
    field = {k: f.contents() for k, f in reader.fields.items()}
    c = m.model.config
    assert field["general.architecture"] == "llama"
    sizes = ("block_count", "attention.head_count", "attention.head_count_kv",
             "embedding_length")  # fmt: skip
    assert [field[f"llama.{k}"] for k in sizes] == [
        c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.hidden_size
    ]  # fmt: skip
    assert field["tokenizer.ggml.model"] == "gpt2" and field["tokenizer.ggml.pre"] == "gpt-2"
    assert field["tokenizer.ggml.tokens"] == m.tokenizer.convert_ids_to_tokens(
        list(range(len(m.tokenizer)))
    )
    assert field["tokenizer.ggml.eos_token_id"] == m.tokenizer.eos_token_id
    assert field["tokenizer.chat_template"] == m.tokenizer.chat_template
    assert len(field["tokenizer.ggml.merges"]) > 0
    assert field["tokenizer.ggml.token_type"][1] == gguf.TokenType.CONTROL
    tensors = _tensors(path)
    assert tensors["blk.0.attn_norm.weight"].tensor_type == Q.F32
    layer = m.model.model.layers[1].self_attn
    for name, w, heads in (("attn_q", layer.q_proj.weight, c.num_attention_heads),
                           ("attn_k", layer.k_proj.weight, c.num_key_value_heads),
                           ("attn_v", layer.v_proj.weight, None)):  # fmt: skip
        t = tensors[f"blk.1.{name}.weight"]
        assert t.tensor_type == Q.F16
        want = w.detach() if heads is None else _hand_rope_rows(w.detach(), heads)
        torch.testing.assert_close(torch.from_numpy(np.array(t.data)), want.half())
    assert "output.weight" in tensors


def test_q8_0_blocks_equal_edgetunes_own_quantizer_and_a_tied_head_is_left_out(tmp_path):
    m = _model(tmp_path, tied=True)
    (path,) = export(m, "gguf", tmp_path, "q8_0").files
    tensors = _tensors(path)
    assert "output.weight" not in tensors
    up = tensors["blk.0.ffn_up.weight"]
    assert up.tensor_type == Q.Q8_0
    w = m.model.model.layers[0].mlp.up_proj.weight
    ours = quantize(w, "q8_0").data.reshape(w.shape[0], -1).numpy()
    np.testing.assert_array_equal(np.asarray(up.data), ours)


def test_transformers_reads_the_file_as_we_do(tmp_path):
    m = _model(tmp_path)
    (path,) = export(m, "gguf", tmp_path, "q8_0").files
    theirs = LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    ours = read_weights(path, m.model)
    ids = torch.randint(
        0, m.model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        a, b, full = theirs(ids).logits, ours(ids).logits, m.model(ids).logits
    torch.testing.assert_close(a, b)
    assert 0 < (a - full).abs().max() < 0.1 * full.abs().max()  # q8_0 moved them, a little


def test_source_keeps_unchanged_tensors_bytes_and_requantizes_changed_ones(tmp_path):
    base = _model(tmp_path)
    (source,) = export(base, "gguf", tmp_path / "base", "q8_0").files
    tuned = _model(tmp_path)
    with torch.no_grad():
        tuned.model.model.layers[0].self_attn.q_proj.weight.add_(0.05)  # training changed it
    tuned.model = read_weights(source, tuned.model)  # the base as the file holds it
    with torch.no_grad():
        tuned.model.model.layers[0].self_attn.q_proj.weight.add_(0.05)
    tuned.source_gguf = source
    (path,) = export(tuned, "gguf", tmp_path / "out", "source").files
    assert path.name == "tiny-q8_0.gguf"
    before, after = _tensors(source), _tensors(path)
    assert {n: t.tensor_type for n, t in before.items()} == {
        n: t.tensor_type for n, t in after.items()
    }
    same = "blk.1.ffn_down.weight"
    np.testing.assert_array_equal(np.asarray(before[same].data), np.asarray(after[same].data))
    changed = "blk.0.attn_q.weight"
    assert not np.array_equal(np.asarray(before[changed].data), np.asarray(after[changed].data))


def test_file_figures_measure_the_quantizations_own_error_on_held_out_text(tmp_path):
    m = _model(tmp_path)
    sequences = held_out(m, 300, "instructions")
    assert sum(len(s) - 1 for s in sequences) >= 300
    f16, q8 = (file_figures(m, export(m, "gguf", tmp_path, q).files[0], sequences)
               for q in ("f16", "q8_0"))  # fmt: skip
    assert f16["quantization_agreement"] > 0.99
    assert abs(f16["quantization_ppl_change"]) < abs(q8["quantization_ppl_change"]) < 0.05
    assert q8["file_mb"] < f16["file_mb"]


def test_lora_adapter_file_adds_back_the_merged_change_over_the_base(tmp_path):
    from peft import LoraConfig, get_peft_model

    m = _model(tmp_path)
    base = {k: v.clone() for k, v in m.model.state_dict().items()}
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"],
                      init_lora_weights=False)  # fmt: skip
    peft = get_peft_model(m.model, lora)
    peft.save_pretrained(tmp_path / "adapter")
    m.model, m.adapter = peft.merge_and_unload(), tmp_path / "adapter"
    model_file, adapter_file = export(m, "gguf", tmp_path / "out", "f16").files
    assert adapter_file.name == "tiny-lora-f16.gguf"
    reader = gguf.GGUFReader(adapter_file)
    field = {k: f.contents() for k, f in reader.fields.items()}
    assert (field["general.type"], field["adapter.type"], field["adapter.lora.alpha"]) == (
        "adapter", "lora", 8.0)  # fmt: skip
    adapter = {t.name: torch.from_numpy(np.array(t.data)).float() for t in reader.tensors}
    assert len(adapter) == 2 * 3 * m.model.config.num_hidden_layers
    merged = _tensors(model_file)
    c = m.model.config
    for i in range(c.num_hidden_layers):
        for proj, name, heads in (("q_proj", "attn_q", c.num_attention_heads),
                                  ("k_proj", "attn_k", c.num_key_value_heads)):  # fmt: skip
            w = _hand_rope_rows(base[f"model.layers.{i}.self_attn.{proj}.weight"], heads)
            a, b = (adapter[f"blk.{i}.{name}.weight.lora_{x}"] for x in "ab")
            want = torch.from_numpy(np.array(merged[f"blk.{i}.{name}.weight"].data)).float()
            torch.testing.assert_close(w + 8 / 4 * b @ a, want, atol=2e-2, rtol=1e-2)


def test_bad_requests_are_one_clear_line(tmp_path):
    m = _model(tmp_path)
    with pytest.raises(EdgetuneError, match="did not come from one"):
        export(m, "gguf", tmp_path, "source")
    with pytest.raises(EdgetuneError, match="choose from f16, q8_0, source"):
        export(m, "gguf", tmp_path, "q2_k")
    with pytest.raises(EdgetuneError, match="unknown export format"):
        export(m, "tflite", tmp_path)


def test_export_command_writes_a_model_folders_file(tmp_path):
    from typer.testing import CliRunner

    from edgetune.cli import app

    m = _model(tmp_path)
    m.model.save_pretrained(tmp_path / "model")
    m.tokenizer.save_pretrained(tmp_path / "model")
    assert open_model(str(tmp_path / "model")).model.config.model_type == "llama"
    result = CliRunner().invoke(app, ["export", str(tmp_path / "model"), "--quant", "q8_0",
                                      "--out", str(tmp_path / "out")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "model-q8_0.gguf").is_file()
    refused = CliRunner().invoke(app, ["export", str(tmp_path / "model")])
    assert refused.exit_code != 0 and "--out" in str(refused.exception)
    if importlib.util.find_spec("llama_cpp") is None:  # --check says how to get llama.cpp
        check = CliRunner().invoke(app, ["export", str(tmp_path / "model"), "--check",
                                         "--data", "instructions", "--positions", "40",
                                         "--out", str(tmp_path / "out")])  # fmt: skip
        assert check.exit_code != 0 and "edgetune[export]" in str(check.exception)


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="llama-cpp-python is not installed (the export extra)")  # fmt: skip
# q8_0 needs a llama.cpp built without its AMX kernels (`make export-setup`): a GGML_NATIVE build
# on an AMX processor ends the process evaluating any Q8_0 file (docs/export.md)
@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_llama_cpp_agrees_with_pytorch_on_the_same_weights(tmp_path, quant):
    from edgetune.export.gguf import check

    m = _model(tmp_path)
    files = export(m, "gguf", tmp_path, quant).files
    g = torch.Generator().manual_seed(1)
    sequences = [torch.randint(3, len(m.tokenizer), (32,), generator=g).numpy() for _ in range(8)]
    figures, failures = check(m, files, quant, sequences)
    assert figures["positions"] == 8 * 31
    assert not failures, failures  # 99 % agreement for f16, 95 % for q8_0; 1 % perplexity
    # llama.cpp's Q8_0 products round the activations to 8 bits too, and this random model's
    # next-token logits are near ties: a few top-1 tokens flip (97 % agree)
    assert figures["max_logit_diff"] < (0.05 if quant == "f16" else 0.5)
