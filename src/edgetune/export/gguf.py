"""GGUF for llama.cpp: a llama-family causal LM as one `.gguf` file, written with the `gguf`
package's `GGUFWriter`, and its check in llama.cpp (through `llama-cpp-python`).

What llama.cpp expects of a llama file:
- metadata `llama.*` (context and embedding lengths, blocks, heads, KV heads, RMS-norm epsilon,
  rope base and dimensions) and `general.file_type`;
- tensors under llama.cpp's names (`gguf.get_tensor_name_map`: `blk.N.attn_q.weight`, ...),
  norms in F32; a tied LM head is left out (llama.cpp then reads `token_embd`);
- q and k projections with their rows reordered for llama.cpp's rope: transformers rotates the
  first half of each head against its second half, llama.cpp rotates adjacent pairs, so the
  rows of each head go from (2, d/2) to (d/2, 2) order (`_rope_rows`);
- the tokenizer: byte-level BPE (`tokenizer.ggml.model = gpt2`) tokens and types (special
  tokens CONTROL), merges, special token ids and the chat template (`gguf.SpecialVocab`), and
  the pre-tokenizer's name (`PRE`; a base from a GGUF file keeps that file's).

Quantizations (`QUANTS`): `f16`; `q8_0` (GGUF's 8-bit blocks of 32, `gguf.quants`; a matrix
whose rows are no whole number of blocks stays F16); `source`: each tensor in the type it had
in the GGUF file the base came from (the bundled SmolLM2: Q4_1 blocks, a Q8_0 embedding),
its bytes copied where the run left it unchanged, requantized where training changed it.

The check (`check`) runs the file in llama.cpp with every position's logits and PyTorch on
the file's own weights (dequantized: f16 values, or q8_0 blocks), over held-out text:
top-1 next-token agreement and both perplexities.
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel

from edgetune.errors import EdgetuneError
from edgetune.export.compare import AGREEMENT_MIN, PPL_TOL, Logits, compare
from edgetune.export.source import RunModel
from edgetune.io import atomic_write

QUANTS = ("f16", "q8_0", "source")
ARCHS = {"llama": gguf.MODEL_ARCH.LLAMA}  # transformers model_type -> llama.cpp architecture
# tokenizer.json pre-tokenizer -> llama.cpp's pre-tokenizer name (its regex set)
PRE = {
    "ByteLevel": "gpt-2",  # GPT-2's regex alone (llama.cpp spells it with a hyphen)
    "Digits+ByteLevel": "smollm",  # each digit its own piece, then GPT-2's regex
}
FILE_TYPES = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
Q = gguf.GGMLQuantizationType


def write(model: RunModel, out: Path, quant: str) -> list[Path]:
    """Write `model` as `out/<name>-<quant>.gguf`; returns [that file]."""
    config = model.model.config
    if model.task == "classify":
        raise EdgetuneError(f"{model.name} is a classifier; GGUF export writes causal LMs "
                            "(a classifier goes to ONNX: --format onnx)")  # fmt: skip
    if config.model_type not in ARCHS:
        raise EdgetuneError(
            f"GGUF export writes {', '.join(ARCHS)} models, not {config.model_type!r}"
        )
    source = _source(model) if quant == "source" else None
    label = quant if source is None else _source_label(source)
    path = out / f"{model.name}-{label}.gguf"
    arch = gguf.MODEL_ARCH_NAMES[ARCHS[config.model_type]]

    def write_file(tmp: Path) -> None:
        w = gguf.GGUFWriter(tmp, arch)
        _metadata(w, model, quant, source)
        _tokenizer(w, model, source)
        for name, values in _tensors(model.model):
            qtype, data = _encode(name, values, quant, source)
            w.add_tensor(name, data, raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    atomic_write(path, write_file)
    return [path] if model.adapter is None else [path, write_adapter(model, out, arch)]


def write_adapter(model: RunModel, out: Path, arch: str) -> Path:
    """The run's PEFT LoRA adapter as llama.cpp's LoRA adapter file, `out/<name>-lora-f16.gguf`:
    `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`, and per adapted
    matrix `<its GGUF name>.lora_a` (r, in) and `.lora_b` (out, r), F16. llama.cpp adds
    (alpha / r) B A to the base's matrix, the base being any GGUF file of the unchanged base
    (the bundled one, or an f16/q8_0 export of it); B's rows of q and k in rope order."""
    from peft import LoraConfig
    from safetensors.torch import load_file

    assert model.adapter is not None
    config = LoraConfig.from_pretrained(str(model.adapter))
    if config.rank_pattern or config.alpha_pattern or config.use_dora:
        raise EdgetuneError("a GGUF LoRA adapter holds one rank and alpha, without DoRA")
    # llama.cpp scales by alpha / r; rsLoRA's alpha / sqrt(r) is that with alpha sqrt(r)
    alpha = config.lora_alpha * (config.r**0.5 if config.use_rslora else 1.0)
    c = model.model.config
    names = gguf.get_tensor_name_map(ARCHS[c.model_type], c.num_hidden_layers)
    state = load_file(str(model.adapter / "adapter_model.safetensors"))
    path = out / f"{model.name}-lora-f16.gguf"

    def write_file(tmp: Path) -> None:
        w = gguf.GGUFWriter(tmp, arch)
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_name(model.name)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        for key, value in sorted(state.items()):
            # base_model.model.<module>.lora_A.weight: A (r, in); lora_B: B (out, r)
            module, sep, part = key.removeprefix("base_model.model.").partition(".lora_")
            name = names.get_name(module + ".weight", try_suffixes=(".weight",))
            if not sep or name is None or part[0] not in "AB":
                raise EdgetuneError(f"the adapter's tensor {key} has no place in a GGUF adapter")
            values = value.float().numpy()
            if part[0] == "B":
                values = _rope_rows(name, values, c)
            w.add_tensor(f"{name}.lora_{part[0].lower()}", values.astype(np.float16))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    atomic_write(path, write_file)
    return path


def _source(model: RunModel) -> gguf.GGUFReader:
    if model.source_gguf is None:
        raise EdgetuneError(
            f"--quant source keeps the quantization of the GGUF file a model came from, and "
            f"{model.name} did not come from one; choose f16 or q8_0"
        )
    return gguf.GGUFReader(model.source_gguf)


def _source_label(source: gguf.GGUFReader) -> str:
    """The source file's type name, as llama.cpp names its files (q4_1, q8_0, ...)."""
    file_type = int(source.fields["general.file_type"].contents())
    return gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_").lower()


# ----------------------------------------------------------------------------- metadata
def _metadata(w: gguf.GGUFWriter, model: RunModel, quant: str,
              source: gguf.GGUFReader | None) -> None:  # fmt: skip
    c = model.model.config
    rope = getattr(c, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise EdgetuneError(
            f"GGUF export writes the default rope, not {rope['rope_type']!r} scaling"
        )
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(model.name)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(rope.get("rope_theta", getattr(c, "rope_theta", 10000.0)))
    w.add_rope_dimension_count(head_dim)
    if head_dim != c.hidden_size // c.num_attention_heads:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_vocab_size(c.vocab_size)
    if source is None:
        w.add_file_type(FILE_TYPES[quant])
    else:
        w.add_file_type(int(source.fields["general.file_type"].contents()))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _tokenizer(w: gguf.GGUFWriter, model: RunModel, source: gguf.GGUFReader | None) -> None:
    """Byte-level BPE as llama.cpp reads it: tokens, types, merges, special ids, template."""
    tok, n_vocab = model.tokenizer, model.model.config.vocab_size
    with tempfile.TemporaryDirectory() as folder:
        tok.save_pretrained(folder)
        spec = json.loads((Path(folder) / "tokenizer.json").read_text())
        if spec["model"]["type"] != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
            raise EdgetuneError("GGUF export writes byte-level BPE tokenizers (GPT-2's kind) only")
        special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=n_vocab)
    tokens = list(tok.convert_ids_to_tokens(list(range(len(tok)))))
    added = tok.added_tokens_decoder
    types = [(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
             if i in added else gguf.TokenType.NORMAL for i in range(len(tokens))]  # fmt: skip
    for i in range(len(tokens), n_vocab):  # embedding rows beyond the tokenizer's
        tokens.append(f"[PAD{i}]")
        types.append(gguf.TokenType.UNUSED)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(_pre(spec, tokens, source))
    w.add_token_list(tokens)
    w.add_token_types(types)
    # whether the tokenizer starts a text with BOS, as transformers does it
    special.add_special_token["bos"] = bool(
        tok.bos_token_id is not None and tok("a")["input_ids"][:1] == [tok.bos_token_id]
    )
    special.add_to_gguf(w, quiet=True)


def _pre(spec: dict, tokens: list[str], source: gguf.GGUFReader | None) -> str:
    """llama.cpp's pre-tokenizer name: the source GGUF's for its own vocabulary, else read
    from tokenizer.json's pre-tokenizer."""
    fields = source.fields if source is not None else {}
    if "tokenizer.ggml.pre" in fields and fields["tokenizer.ggml.tokens"].contents() == tokens:
        return str(fields["tokenizer.ggml.pre"].contents())
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    key = "+".join(p.get("type", "") for p in parts)
    digits_ok = all(p.get("individual_digits", True) for p in parts if p["type"] == "Digits")
    if key not in PRE or not digits_ok:
        raise EdgetuneError(
            f"GGUF export does not know llama.cpp's name for the pre-tokenizer {key or 'none'}; "
            f"it knows {', '.join(PRE)}"
        )
    return PRE[key]


# ------------------------------------------------------------------------------ tensors
def _tensors(model: PreTrainedModel) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, fp32 values) of every weight, q/k rows in llama.cpp's rope order."""
    c = model.config
    names = gguf.get_tensor_name_map(ARCHS[c.model_type], c.num_hidden_layers)
    for key, value in model.state_dict().items():
        if key == "lm_head.weight" and c.tie_word_embeddings:
            continue
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise EdgetuneError(f"GGUF export has no llama.cpp name for the tensor {key}")
        yield name, _rope_rows(name, value.detach().float().numpy(), c)


def _heads(name: str, config) -> int | None:
    """The head count whose rows `name` holds, for the q and k projections (else None)."""
    if ".attn_q." in name:
        return config.num_attention_heads
    if ".attn_k." in name:
        return config.num_key_value_heads
    return None


def _rope_rows(name: str, w: np.ndarray, config, inverse: bool = False) -> np.ndarray:
    """transformers' rope row order (per head: (2, d/2)) -> llama.cpp's ((d/2, 2)), or back."""
    heads = _heads(name, config)
    if heads is None:
        return w
    half = w.shape[0] // heads // 2
    order = (heads, half, 2) if inverse else (heads, 2, half)
    return w.reshape(*order, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _encode(name: str, values: np.ndarray, quant: str,
            source: gguf.GGUFReader | None) -> tuple[Q, np.ndarray]:  # fmt: skip
    """The GGUF type and bytes (or values) of one tensor."""
    if values.ndim < 2:
        return Q.F32, values
    if source is not None:
        held = _source_tensor(source, name)
        if held is not None:
            if held.tensor_type in (Q.F32, Q.F16, Q.BF16):
                return held.tensor_type, gguf.quants.quantize(values, held.tensor_type)
            if np.array_equal(gguf.quants.dequantize(held.data, held.tensor_type), values):
                return held.tensor_type, np.asarray(held.data)  # unchanged: its own bytes
            try:
                return held.tensor_type, gguf.quants.quantize(values, held.tensor_type)
            except NotImplementedError:
                raise EdgetuneError(
                    f"{name} was {held.tensor_type.name} in the source file, which the gguf "
                    "package cannot quantize; choose f16 or q8_0"
                ) from None
        quant = "q8_0"
    if quant == "q8_0" and values.shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0] == 0:
        return Q.Q8_0, gguf.quants.quantize(values, Q.Q8_0)
    return Q.F16, values.astype(np.float16)


def _source_tensor(source: gguf.GGUFReader, name: str):
    for t in source.tensors:
        if t.name == name:
            return t
    return None


# -------------------------------------------------------------------------------- check
def read_weights(path: Path, model: PreTrainedModel) -> PreTrainedModel:
    """A copy of `model` holding the weights of the GGUF file at `path`, dequantized to fp32
    (q/k rows back in transformers' order): PyTorch at the file's own precision."""
    c = model.config
    names = gguf.get_tensor_name_map(ARCHS[c.model_type], c.num_hidden_layers)
    keys: dict[str | None, list[str]] = {}
    for key in model.state_dict():
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        keys.setdefault(name, []).append(key)
    state = {}
    for t in gguf.GGUFReader(path).tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type).reshape(
            [int(n) for n in reversed(t.shape)]
        )
        values = _rope_rows(t.name, values.astype(np.float32), c, inverse=True)
        for key in keys.get(t.name, []):
            state[key] = torch.from_numpy(values.copy())
    if c.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    copied = copy.deepcopy(model)
    missing = set(copied.load_state_dict(state, strict=False).missing_keys)
    if missing - {"lm_head.weight"}:
        raise EdgetuneError(f"{path} lacks the tensors of {sorted(missing)[:3]}")
    return copied.eval()


def file_figures(model: RunModel, path: Path, sequences: list[np.ndarray]) -> dict[str, float]:
    """PyTorch on the file's own weights against the fp32 model: the quantization's own
    error (top-1 agreement, both perplexities), and the file's size."""
    fp32 = compare(
        sequences, torch_logits(model.model), torch_logits(read_weights(path, model.model))
    )
    return {"file_mb": path.stat().st_size / 2**20, "ppl_fp32": fp32["ppl_reference"],
            "ppl_file_weights": fp32["ppl_runtime"], "quantization_ppl_change": fp32["ppl_change"],
            "quantization_agreement": fp32["agreement"]}  # fmt: skip


def torch_logits(net: nn.Module) -> Logits:
    def run(ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.as_tensor(ids[None], dtype=torch.long)).logits[0].numpy()

    return run


def agreement_floor(quant: str) -> float:
    """The top-1 agreement with PyTorch on the same weights a file must reach in llama.cpp:
    99 % for float files; 95 % for quantized ones, whose products in llama.cpp also round the
    activations to 8 bits (q8_1 blocks), which PyTorch on the dequantized weights does not
    (SmolLM2 LoRA: 95.1 % at q8_0, 95.7 % at the source's Q4_1, perplexity within 0.75 %;
    docs/export.md)."""
    return AGREEMENT_MIN if quant in ("f16", "f32") else 0.95


def check(model: RunModel, files: list[Path], quant: str,
          sequences: list[np.ndarray]) -> tuple[dict[str, float], list[str]]:  # fmt: skip
    """The file in llama.cpp against PyTorch on the file's own weights, over `sequences`:
    top-1 agreement and both perplexities (and `file_figures`). Fails beyond 1 % perplexity,
    or below the agreement its types allow (`agreement_floor`)."""
    try:
        import llama_cpp
    except ImportError:
        raise EdgetuneError(
            "the GGUF check runs llama.cpp through llama-cpp-python, which is not installed: "
            "pip install 'edgetune[export]' (or `make export-setup`)"
        ) from None
    path = files[0]
    ctx = max(len(s) for s in sequences)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=ctx, n_batch=ctx, n_ubatch=ctx,
                          logits_all=True, verbose=False, seed=0,
                          n_threads=torch.get_num_threads(),
                          n_threads_batch=torch.get_num_threads())  # fmt: skip

    def in_llama_cpp(ids: np.ndarray) -> np.ndarray:
        llm.reset()
        llm.eval(ids.tolist())
        return np.array(llm.scores[: len(ids)], dtype=np.float32)

    figures = compare(sequences, torch_logits(read_weights(path, model.model)), in_llama_cpp)
    figures.update(file_figures(model, path, sequences))
    failures = []
    floor = agreement_floor(quant)
    if figures["agreement"] < floor:
        failures.append(f"top-1 agreement {figures['agreement']:.2%} < {floor:.0%} in llama.cpp")
    if abs(figures["ppl_change"]) > PPL_TOL:
        failures.append(f"perplexity in llama.cpp differs by {figures['ppl_change']:+.2%} "
                        f"(beyond {PPL_TOL:.0%}) from PyTorch on the same weights")  # fmt: skip
    return figures, failures
