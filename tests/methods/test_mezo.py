"""`mezo`: exact restoration, the perturbation itself, the projected gradient, replay."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import make_batch, make_model

from edgetune.errors import EdgetuneError
from edgetune.methods import build_method
from edgetune.methods.base import MethodSettings, forward_loss
from edgetune.methods.mezo import Mezo


def mezo(model, lr=1e-2, **options) -> Mezo:
    return build_method(
        "mezo", model, MethodSettings(lr=lr, total_steps=10, seed=7, options=options)
    )


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", ["bert", "llama", "gpt2", "t5"])
def test_perturbation_restores_weights_exactly(kind):
    m, batch = mezo(make_model(kind)), make_batch(kind)
    before = snapshot(m.model)
    with torch.no_grad():
        for scale in (1e-3, -1e-3):
            with m.perturbed(seed=123, scale=scale):
                forward_loss(m.model, batch)
    for k, v in m.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    zero = build_method("mezo", make_model(kind), MethodSettings(lr=0.0, total_steps=3))
    zero.step([batch])
    for k, v in zero.model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize(
    ("kind", "trainable"), [("bert", "all"), ("gpt2", "all"), ("llama", "last-1@0.5")]
)
def test_perturbed_forward_equals_an_explicitly_perturbed_copy(kind, trainable):
    m, batch = mezo(make_model(kind), trainable=trainable), make_batch(kind)
    reference = copy.deepcopy(m.model)
    params = dict(reference.named_parameters())
    with torch.no_grad():
        for i, t in enumerate(m.tensors):
            name = t.key.split("[")[0]
            target = params[name] if t.index is None else params[name][t.index]
            target.add_(m.z(99, i), alpha=0.01)  # tied weights: one tensor, perturbed once
        m.model.eval()
        reference.eval()
        with m.perturbed(99, 0.01):
            got = m.model(**batch).logits
        torch.testing.assert_close(got, reference(**batch).logits)
        assert not torch.allclose(m.model(**batch).logits, got)


def test_projected_gradient_is_the_directional_derivative():
    model, batch = make_model("bert", torch.float64), make_batch("bert")
    m = mezo(model, eps=1e-4, trainable="last-1")
    seed = 1234
    with torch.no_grad(), m.perturbed(seed, 1e-4):
        plus = float(forward_loss(m.model, batch))
    with torch.no_grad(), m.perturbed(seed, -1e-4):
        minus = float(forward_loss(m.model, batch))
    g = (plus - minus) / 2e-4
    # autograd: grad(L) . z over the trainable tensors
    for t in m.tensors:
        t.param.requires_grad_(True)
    m.model.eval()
    forward_loss(m.model, batch).backward()
    expected = sum(float((t.param.grad * m.z(seed, i)).sum()) for i, t in enumerate(m.tensors))
    assert g == pytest.approx(expected, rel=1e-5)


def test_history_replays_the_run_from_seeds_and_scalars():
    batch = make_batch("llama")
    a = mezo(make_model("llama"), trainable="last-1")
    results = [a.step([batch]) for _ in range(3)]
    history = a.clear_history()
    assert len(history) == 3 and a.history == []
    assert len({s for s, _, _ in history}) == 3
    assert [g for _, g, _ in history] == [r.metrics["projected_grad"] for r in results]
    assert [lr for _, _, lr in history] == [r.metrics["lr"] for r in results]
    b = mezo(make_model("llama"), trainable="last-1")
    for seed, g, lr in history:
        b.replay(seed, g, lr)
    for k, v in a.trainable_state().items():
        assert torch.equal(v, b.trainable_state()[k]), k


def test_rows_of_a_scheme_fraction_are_the_only_part_that_moves():
    m, batch = mezo(make_model("llama"), trainable="last-1@0.5"), make_batch("llama")
    q = m.model.model.layers[1].self_attn.q_proj.weight
    before = q.detach().clone()
    m.step([batch])
    assert not torch.equal(q[:16], before[:16]) and torch.equal(q[16:], before[16:])
    assert "model.layers.1.self_attn.q_proj.weight[0:16]" in m.trainable_state()


def test_bad_options_are_reported():
    with pytest.raises(EdgetuneError, match="eps"):
        mezo(make_model("bert"), eps=0)
    with pytest.raises(EdgetuneError, match="unknown scheme"):
        mezo(make_model("bert"), trainable="every")


def test_label_words_classify_with_a_causal_lm():
    from edgetune.methods.label_words import LabelWords

    lm, batch = make_model("llama"), make_batch("llama")
    words = [5, 9, 17]
    clf = LabelWords(lm, words)
    labels = torch.tensor([0, 2, 1, 1])
    lm.eval()
    with torch.no_grad():
        out = clf(batch["input_ids"], batch["attention_mask"], labels=labels)
        full = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    last = batch["attention_mask"].sum(1) - 1
    torch.testing.assert_close(out.logits, full[torch.arange(4), last][:, words])
    m = mezo(clf, lr=5e-2, trainable="last-1")
    data = {**batch, "labels": labels}
    before = float(clf(**data).loss)
    for _ in range(20):
        m.step([data])
    assert float(clf(**data).loss) < before


def test_z_in_chunks_is_the_same_direction_everywhere(monkeypatch):
    import edgetune.methods.mezo as mezo_module

    monkeypatch.setattr(mezo_module, "CHUNK", 40)  # several chunks per matrix
    m, batch = mezo(make_model("bert"), trainable="last-1@0.5"), make_batch("bert")
    i = next(i for i, t in enumerate(m.tensors) if t.index is not None)
    assert len(list(m.chunks(5, i))) > 1
    z = m.z(5, i)
    assert z.shape == m.tensors[i].view().shape and torch.equal(z, m.z(5, i))
    before = snapshot(m.model)
    reference = copy.deepcopy(m.model)
    params = dict(reference.named_parameters())
    with torch.no_grad():
        for j, t in enumerate(m.tensors):
            name = t.key.split("[")[0]
            target = params[name] if t.index is None else params[name][t.index]
            target.add_(m.z(5, j), alpha=0.01)
        m.model.eval()
        reference.eval()
        with m.perturbed(5, 0.01):
            got = m.model(**batch).logits
        torch.testing.assert_close(got, reference(**batch).logits)
    for k, v in m.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_an_embedding_table_is_perturbed_without_a_copy():
    m, batch = mezo(make_model("bert")), make_batch("bert")
    table = m.model.bert.embeddings.word_embeddings
    dense = m.model.bert.encoder.layer[0].intermediate.dense
    seen = []
    with torch.no_grad(), m.perturbed(3, 0.01):  # hooks after perturbed's own: they see its swap
        for module in (table, dense):
            module.register_forward_pre_hook(lambda mod, _a: seen.append(mod.weight.data_ptr()))
        m.model(**batch)
    # the table is read in place; a Linear gets a perturbed copy for its forward
    assert seen[0] == table.weight.data_ptr() and seen[1] != dense.weight.data_ptr()


def test_queries_average_their_estimates_and_replay_bit_for_bit():
    """n queries: n (seed, g / n, lr) entries a step, each query's g the directional derivative
    at the same theta; another copy replays the entries to the same bits."""
    batch = make_batch("llama")
    a = mezo(make_model("llama"), lr=5e-2, trainable="last-1", queries=3)
    start = {k: v.clone() for k, v in a.trainable_state().items()}
    probe = mezo(make_model("llama"), trainable="last-1", queries=3)
    result = a.step([batch])
    entries = a.clear_history()
    assert len(entries) == 3 and len({s for s, _, _ in entries}) == 3
    gs = []
    for seed, share, _ in entries:  # each share is its query's estimate at the start theta / 3
        with torch.no_grad():
            pair = []
            for scale in (1e-3, -1e-3):
                with probe.perturbed(seed, scale):
                    pair.append(float(forward_loss(probe.model.eval(), batch)))
        gs.append((pair[0] - pair[1]) / 2e-3)
        assert share == pytest.approx(gs[-1] / 3, rel=1e-4)
    assert result.metrics["projected_grad"] == pytest.approx(sum(gs) / 3, rel=1e-4)
    b = mezo(make_model("llama"), trainable="last-1", queries=3)
    b.load_trainable_state(start)
    for seed, g, lr in entries:
        b.replay(seed, g, lr)
    for k, v in a.trainable_state().items():
        assert torch.equal(v, b.trainable_state()[k]), k


def test_low_rank_perturbations_are_rank_k_and_perturb_as_a_copy_would():
    m, batch = mezo(make_model("bert"), trainable="last-1", perturbation_rank=2), make_batch("bert")
    ranks = {tuple(t.view().shape): int(torch.linalg.matrix_rank(m.z(4, i)))
             for i, t in enumerate(m.tensors) if t.view().ndim == 2}  # fmt: skip
    assert ranks and all(r == 2 for r in ranks.values())
    vectors = [m.z(4, i) for i, t in enumerate(m.tensors) if t.view().ndim == 1]
    assert vectors and all(v.abs().min() > 0 for v in vectors)  # dense
    reference = copy.deepcopy(m.model)
    params = dict(reference.named_parameters())
    with torch.no_grad():
        for i, t in enumerate(m.tensors):
            params[t.key].add_(m.z(4, i), alpha=0.01)
        m.model.eval()
        reference.eval()
        with m.perturbed(4, 0.01):
            got = m.model(**batch).logits
        torch.testing.assert_close(got, reference(**batch).logits)


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_mezo_over_lora_moves_only_the_adapters(kind):
    """trainable: lora perturbs and updates the LoRA factors (and a classifier head) alone; the
    base keeps its bits, the loss falls, and the projected gradient is the directional
    derivative over the adapters."""
    model, batch = make_model(kind), make_batch(kind)
    m = mezo(model, lr=5e-2, trainable="lora", rank=4, queries=2)
    keys = set(m.trainable_state())
    assert keys and all("lora_" in k or "modules_to_save" in k for k in keys)
    assert any("modules_to_save" in k for k in keys) == (kind == "bert")  # the classifier head
    before = {k: v.clone() for k, v in m.model.state_dict().items()}
    with torch.no_grad():
        start = float(forward_loss(m.model.eval(), batch))
    for _ in range(15):
        m.step([batch])
    with torch.no_grad():
        assert float(forward_loss(m.model.eval(), batch)) < start
    moved = {k for k, v in m.model.state_dict().items() if not torch.equal(v, before[k])}
    assert moved and all("lora_" in k or "modules_to_save" in k for k in moved)
    merged = m.export_model()
    assert not any("lora_" in k for k in merged.state_dict())


def test_bad_subspace_options_are_reported():
    with pytest.raises(EdgetuneError, match="queries"):
        mezo(make_model("bert"), queries=0)
    with pytest.raises(EdgetuneError, match="rank"):
        mezo(make_model("bert"), trainable="lora", rank=0)
