"""The cost model against measurement on tiny random models (CPU, seconds):

- forward and backward FLOPs equal to torch.utils.flop_counter.FlopCounterMode's, which
  counts matrix products only (eager attention; a sliding window changes only the mask);
  element-wise work (softmax, norms, activations, loss, embedding lookups) is neither counted
  there nor in `2 * macs`;
- bytes saved for backward within 10 % of what autograd's saved-tensor hooks see (and still
  holds at the end of the forward), for backprop
  and for sparse update schemes applied by the runtime's `sparse` method;
- trained parameters exactly, a tied LM head's matrix counted once;
- a hybrid step (backprop on the top blocks, zeroth-order below): all its FLOPs (two forwards,
  the top's backward) equal to the counter's over the runtime's whole step, and the bytes
  saved by its perturbed forward within 10 %, as a sparse scheme's.
"""

from __future__ import annotations

import pytest
from rules import RULES

from edgetune.cost.methods import step_cost
from edgetune.cost.shapes import shape_from_config
from edgetune.scheme import UnitUpdate, UpdateScheme

B, T, TGT = 2, 32, 16


def _build(cfg, cls_name):
    import torch
    import transformers

    torch.manual_seed(0)
    cfg._attn_implementation = "eager"  # the attention the cost model describes
    return getattr(transformers, cls_name)(cfg).eval()  # eval: dropout off


def _loss_fn(model, cfg, head):
    batch = _batch(cfg, head)
    return lambda: model(**batch).loss


def _batch(cfg, head) -> dict:
    """A fixed batch of random ids and labels for the model's head."""
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    kw = {}
    if cfg.is_encoder_decoder:
        kw["decoder_input_ids"] = torch.randint(0, cfg.vocab_size, (B, TGT), generator=g)
        kw["labels"] = torch.randint(0, cfg.vocab_size, (B, TGT), generator=g)
    elif head == "lm":
        kw["labels"] = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    else:
        kw["labels"] = torch.randint(0, 2, (B,), generator=g)
    return {"input_ids": ids, **kw}


def _saved_at_end(loss_fn, model) -> int:
    """Bytes of the distinct non-parameter storages autograd saved that are still alive when
    the forward ends. Like `edgetune.measure.saved.saved_bytes`, but a tensor saved by a graph
    that was dropped during the forward (behind an output the runtime detaches: the embeddings
    under a trained tied head) is not counted: it was freed at once."""
    import weakref

    import torch

    params = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    seen: list[weakref.ref] = []

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params and st.nbytes() > 0:
            seen.append(weakref.ref(st))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn()
    alive = {st.data_ptr(): st.nbytes() for r in seen if (st := r()) is not None}
    del loss
    return sum(alive.values())


FAMILIES = [
    "bert",
    "bert-mlm",
    "distilbert",
    "albert",
    "gpt2",
    "llama-gqa",
    "llama-tied",
    "qwen2",
    "qwen3",
    "gemma3",
    "gemma3-softcap",
    "mistral",
    "phi3",
    "t5",
    "flan-t5-gated",
]


@pytest.mark.parametrize("family", FAMILIES)
def test_backprop_flops_and_saved_bytes(tiny, family):
    from edgetune.measure.flops import count_flops

    cfg, cls_name, head = tiny[family]
    model = _build(cfg, cls_name)
    fn = _loss_fn(model, cfg, head)
    measured = count_flops(fn)
    saved = _saved_at_end(fn, model)
    c = step_cost(shape_from_config(cfg.to_dict()), RULES["backprop"], B, T, TGT, head=head)
    assert 2 * c.fwd_macs == pytest.approx(measured.forward, rel=1e-9)
    assert 2 * c.bwd_macs == pytest.approx(measured.backward, rel=1e-9)
    assert c.memory.activations == pytest.approx(saved, rel=0.10)
    assert c.trained_params == sum(p.numel() for p in model.parameters())  # tied: once


def _sparse(model, scheme: UpdateScheme):
    """The runtime's `sparse` method on `model`: requires_grad on the scheme's parameters only,
    and, when a trained LM head is tied to the embedding matrix, the embedding output detached
    (the head's gradient never reaches the lookup)."""
    from edgetune.methods import build_method
    from edgetune.methods.base import MethodSettings

    settings = MethodSettings(lr=1e-4, total_steps=1, options={"scheme": scheme})
    return build_method("sparse", model, settings)


SCHEMES = {
    "qkv-ffn1-last": lambda n: UpdateScheme.qkv_ffn1(n, 1),
    "bias-only": lambda n: UpdateScheme.bias_only(n),
    "last-1": lambda n: UpdateScheme.last_k(n, 1),
    "head-only": lambda n: UpdateScheme((UnitUpdate("head"),), "head-only"),
}


@pytest.mark.parametrize("family", ["bert", "bert-mlm", "llama-gqa", "llama-tied", "qwen2",
                                    "qwen3", "gemma3", "mistral", "phi3"])  # fmt: skip
@pytest.mark.parametrize("scheme_name", sorted(SCHEMES))
def test_sparse_flops_and_saved_bytes(tiny, family, scheme_name):
    """bert-mlm and llama-tied have an LM head tied to the embedding matrix: the scheme's
    head unit trains that matrix (its dW, counted once), the lookup gets no gradient."""
    from edgetune.measure.flops import count_flops

    cfg, cls_name, head = tiny[family]
    if family.startswith("llama") and scheme_name == "bias-only":
        pytest.skip("Llama has no biases; bias-only trains the norms and head only")
    model = _build(cfg, cls_name)
    shape = shape_from_config(cfg.to_dict())
    scheme = SCHEMES[scheme_name](shape.n_layers)
    _sparse(model, scheme)
    fn = _loss_fn(model, cfg, head)
    measured = count_flops(fn)
    saved = _saved_at_end(fn, model)
    c = step_cost(shape, RULES["sparse"], B, T, head=head, scheme=scheme)
    assert 2 * c.fwd_macs == pytest.approx(measured.forward, rel=1e-9)
    assert 2 * c.bwd_macs == pytest.approx(measured.backward, rel=1e-9)
    assert c.memory.activations == pytest.approx(saved, rel=0.10)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert c.trained_params == trainable


@pytest.mark.parametrize("k", [1, 3])
def test_sparse_encoder_decoder_layer_numbering(tiny, k):
    """T5: scheme layers count encoder blocks first, then decoder blocks; the last k blocks
    and the head train (k=3 reaches into the encoder, so the backward crosses into it through
    the cross-attention's k and v). T5's head is the shared token table: it trains once, its
    lookups in both stacks get no gradient."""
    from edgetune.measure.flops import count_flops

    cfg, cls_name, head = tiny["t5"]
    model = _build(cfg, cls_name)
    shape = shape_from_config(cfg.to_dict())
    scheme = UpdateScheme.last_k(shape.n_layers + shape.n_dec_layers, k)
    _sparse(model, scheme)
    assert model.shared.weight.requires_grad
    fn = _loss_fn(model, cfg, head)
    measured = count_flops(fn)
    saved = _saved_at_end(fn, model)
    c = step_cost(shape, RULES["sparse"], B, T, TGT, head=head, scheme=scheme)
    assert 2 * c.fwd_macs == pytest.approx(measured.forward, rel=1e-9)
    assert 2 * c.bwd_macs == pytest.approx(measured.backward, rel=1e-9)
    assert c.memory.activations == pytest.approx(saved, rel=0.10)
    assert c.trained_params == sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(("family", "k"), [("bert", 1), ("llama-tied", 1), ("gpt2", 1),
                                            ("t5", 1), ("t5", 3)])  # fmt: skip
def test_lora_on_the_last_blocks_flops_and_saved_bytes(tiny, family, k):
    """LoRA's `layers: last-K`: adapters in the last k blocks only (T5 counts encoder blocks
    first: k=3 reaches into the encoder), so backward stops at the lowest of them and saves
    those blocks' activations only; FLOPs exact, saved bytes within 10 %, adapters counted."""
    from edgetune.measure.flops import count_flops
    from edgetune.methods import build_method
    from edgetune.methods.base import MethodSettings
    from edgetune.methods.options import LoraOptions
    from edgetune.methods.registry import METHODS

    cfg, cls_name, head = tiny[family]
    model = _build(cfg, cls_name)
    shape = shape_from_config(cfg.to_dict())
    options = LoraOptions(r=4, layers=f"last-{k}")
    m = build_method("lora", model, MethodSettings(lr=1e-4, total_steps=1, options=options))
    m.model.eval()
    fn = _loss_fn(m.model, cfg, head)
    measured = count_flops(fn)
    saved = _saved_at_end(fn, m.model)
    spec = METHODS["lora"]
    c = step_cost(shape, spec.rule_for(options), B, T, TGT, head=head,
                  **spec.cost_inputs(options, shape))  # fmt: skip
    full = step_cost(shape, RULES["lora"], B, T, TGT, head=head, lora_rank=4,
                     lora_units=("q", "k", "v"))  # fmt: skip
    assert 2 * c.fwd_macs == pytest.approx(measured.forward, rel=1e-9)
    assert 2 * c.bwd_macs == pytest.approx(measured.backward, rel=1e-9)
    assert c.bwd_macs < full.bwd_macs and c.memory.activations < full.memory.activations
    assert c.memory.activations == pytest.approx(saved, rel=0.10)
    trained = sum(p.numel() for p in m.model.parameters() if p.requires_grad)
    assert c.trained_params == trained


@pytest.mark.parametrize("family", ["bert", "llama-tied", "gpt2", "t5"])
@pytest.mark.parametrize("below", ["all", "lora"])
def test_hybrid_flops_and_saved_bytes(tiny, family, below):
    """The runtime's whole `hybrid` step under the counter: L- without a graph, L+ and the
    top's backward, the updates (no matrix products). llama-tied: the embedding matrix is the
    trained head's, so backprop trains it and the bottom's estimate leaves it out."""
    from torch.utils.flop_counter import FlopCounterMode

    from edgetune.methods import build_method
    from edgetune.methods.base import MethodSettings
    from edgetune.methods.options import HybridOptions
    from edgetune.methods.registry import METHODS
    from edgetune.seeds import mix_seed

    # Prepare
    cfg, cls_name, head = tiny[family]
    model = _build(cfg, cls_name)
    shape = shape_from_config(cfg.to_dict())
    options = HybridOptions(backprop_blocks=1, zo_trainable=below, rank=4)
    m = build_method("hybrid", model, MethodSettings(lr=1e-4, total_steps=2, options=options))
    spec = METHODS["hybrid"]
    c = step_cost(shape, spec.rule_for(options), B, T, TGT, head=head,
                  **spec.cost_inputs(options, shape))  # fmt: skip
    batch = _batch(cfg, head)
    with m.directions.perturbed(mix_seed(0, 0), options.eps):  # L+'s forward, saved tensors
        saved = _saved_at_end(lambda: model(**batch).loss, model)
    # Execute
    with FlopCounterMode(display=False) as counter:
        m.step([batch])
    # Assert
    assert 2 * (c.fwd_macs + c.bwd_macs) == pytest.approx(counter.get_total_flops(), rel=1e-9)
    sparse = step_cost(
        shape,
        RULES["sparse"],
        B,
        T,
        TGT,
        head=head,
        scheme=UpdateScheme.last_k(shape.n_layers + shape.n_dec_layers, 1),
    )
    assert c.bwd_macs == sparse.bwd_macs  # the top's backward only
    assert c.memory.activations == pytest.approx(saved, rel=0.10)
    top = sum(p.numel() for p in model.parameters() if p.requires_grad)
    bottom = sum(t.view().numel() for t in m.directions.tensors)
    assert c.trained_params == top + bottom
    assert c.memory.optimizer == 2 * 4 * top  # AdamW moments of the top only


@pytest.mark.parametrize("family", ["bert", "llama-tied", "t5"])
@pytest.mark.parametrize("below", ["all", "lora", "frozen"])
def test_hybrid_with_a_lora_top_flops_and_saved_bytes(tiny, family, below):
    """`top_trainable: lora`: the top block's adapters by backprop over SPSA below (or
    nothing below): the whole step's FLOPs exact, L+'s saved bytes within 10 %, every trained
    tensor counted, AdamW state for the top's adapters (and a classifier head) only."""
    from torch.utils.flop_counter import FlopCounterMode

    from edgetune.methods import build_method
    from edgetune.methods.base import MethodSettings
    from edgetune.methods.options import HybridOptions
    from edgetune.methods.registry import METHODS
    from edgetune.seeds import mix_seed

    cfg, cls_name, head = tiny[family]
    model = _build(cfg, cls_name)
    shape = shape_from_config(cfg.to_dict())
    options = HybridOptions(backprop_blocks=1, zo_trainable=below, top_trainable="lora", rank=4)
    m = build_method("hybrid", model, MethodSettings(lr=1e-4, total_steps=2, options=options))
    spec = METHODS["hybrid"]
    c = step_cost(shape, spec.rule_for(options), B, T, TGT, head=head,
                  **spec.cost_inputs(options, shape))  # fmt: skip
    batch = _batch(cfg, head)
    if m.directions is None:
        saved = _saved_at_end(lambda: m.model(**batch).loss, m.model)
    else:
        with m.directions.perturbed(mix_seed(0, 0), options.eps):
            saved = _saved_at_end(lambda: m.model(**batch).loss, m.model)
    with FlopCounterMode(display=False) as counter:
        m.step([batch])
    assert 2 * (c.fwd_macs + c.bwd_macs) == pytest.approx(counter.get_total_flops(), rel=1e-9)
    assert c.memory.activations == pytest.approx(saved, rel=0.10)
    top = sum(p.numel() for p in m.model.parameters() if p.requires_grad)
    bottom = sum(t.view().numel() for t in m.directions.tensors) if m.directions else 0
    assert c.trained_params == top + bottom
    assert c.memory.optimizer == 2 * 4 * top


FORWARD_MODE = ["bert", "bert-mlm", "distilbert", "gpt2", "llama-gqa", "llama-tied", "qwen3",
                "t5"]  # fmt: skip


@pytest.mark.parametrize("family", FORWARD_MODE)
@pytest.mark.parametrize("trainable", ["all", "lora"])
def test_forward_mode_flops_are_a_forward_and_its_backward(tiny, family, trainable):
    """The runtime's `forward_grad` jvp (one forward with tangents) counted by FlopCounterMode
    against the registry's rule and cost inputs for these options: each matrix product whose
    output carries a tangent forms two more, one per operand, a frozen weight's zero tangent
    included (over LoRA: every frozen linear above the first adapter). Over all parameters
    that is a forward and its backward."""
    from torch.utils.flop_counter import FlopCounterMode

    from edgetune.methods import METHODS, build_method
    from edgetune.methods.base import MethodSettings

    cfg, cls_name, head = tiny[family]
    model = _build(cfg, cls_name)
    spec = METHODS["forward_grad"]
    options = spec.parse({"trainable": trainable, "rank": 4})
    m = build_method("forward_grad", model, MethodSettings(lr=1e-3, total_steps=1,
                                                           options=options))  # fmt: skip
    batch = _batch(cfg, head)
    with FlopCounterMode(display=False) as counter:
        m.directional_derivative(0, [batch])
    shape = shape_from_config(cfg.to_dict())
    c = step_cost(shape, spec.rule_for(options), B, T, TGT, head=head,
                  **spec.cost_inputs(options, shape))  # fmt: skip
    bp = step_cost(shape, RULES["backprop"], B, T, TGT, head=head)
    assert 2 * c.fwd_macs == pytest.approx(counter.get_total_flops(), rel=1e-9)
    assert c.bwd_macs == 0 and c.fwd_macs <= bp.macs
    if trainable == "all":  # every product carries tangents: a forward and its backward
        assert c.fwd_macs == bp.macs
    assert c.trained_params == sum(t.param.numel() for t in m.tensors)


DROPOUT = {
    "bert": {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1},
    "distilbert": {"dropout": 0.1, "attention_dropout": 0.1, "seq_classif_dropout": 0.2},
    "albert": {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
               "classifier_dropout_prob": 0.1},
    "gpt2": {"resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1},
    "t5": {"dropout_rate": 0.1},
    "flan-t5-gated": {"dropout_rate": 0.1},
}  # fmt: skip


@pytest.mark.parametrize("family", sorted(DROPOUT))
def test_backprop_in_train_mode_saves_dropout_noise(tiny, family):
    """In train mode every dropout draws a noise tensor that its product saves (and the
    attention map is saved again, dropped): the bytes saved within 1 % of autograd's."""
    import copy

    cfg, cls_name, head = tiny[family]
    cfg = copy.deepcopy(cfg)
    for k, v in DROPOUT[family].items():
        setattr(cfg, k, v)
    model = _build(cfg, cls_name).train()
    saved = _saved_at_end(_loss_fn(model, cfg, head), model)
    shape = shape_from_config(cfg.to_dict())
    c = step_cost(shape, RULES["backprop"], B, T, TGT, head=head)
    off = step_cost(shape, RULES["backprop"], B, T, TGT, head=head, train_mode="off")
    assert c.memory.activations > off.memory.activations
    assert c.memory.activations == pytest.approx(saved, rel=0.01)
