"""One matrix over every registered method on a tiny BERT classifier and a tiny Llama LM, and
every method on a tiny LM of each decoder family beside Llama (Llama's settings).

Prepare: a seeded tiny model, a fixed batch, the method's settings below. Execute: a few steps.
Assert: loss falls, frozen tensors keep their bits, seeds reproduce, trainable state round-trips
through safetensors, and state_dict resume continues bit for bit; for the other families, loss
finite at every step and falling, frozen tensors keep their bits.
"""

from __future__ import annotations

import io

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import make_batch, make_model

from edgetune.methods import METHODS, build_method
from edgetune.methods.base import MethodSettings, forward_loss

MODELS = ["bert", "llama"]
# method -> model -> (lr, options, steps for the loss test)
SETTINGS = {
    "backprop": {"bert": (1e-2, {}, 5), "llama": (1e-2, {}, 5)},
    "sparse": {
        "bert": (1e-2, {"scheme": "last-1@0.5"}, 5),
        "llama": (1e-2, {"scheme": "last-1@0.5"}, 5),
    },
    "pepita": {"bert": (0.5, {}, 5), "llama": (0.05, {}, 5)},
    "mempepita": {"bert": (0.5, {}, 5), "llama": (0.05, {}, 5)},
    "mezo": {
        "bert": (1e-2, {"trainable": "last-1"}, 25),
        "llama": (1e-2, {"trainable": "last-1"}, 25),
    },
    "lora": {"bert": (1e-2, {"r": 4}, 5), "llama": (1e-2, {"r": 4}, 5)},
    "hybrid": {
        "bert": (1e-2, {"scheme": "last-1@0.5", "zo_lr": 1e-3}, 5),
        "llama": (1e-2, {"scheme": "last-1@0.5", "zo_lr": 1e-3}, 5),
    },
    "forward_grad": {"bert": (5e-2, {"rank": 4}, 15), "llama": (5e-2, {"rank": 4}, 15)},
}
CASES = [pytest.param(m, k, id=f"{m}-{k}") for m in METHODS for k in MODELS]
# tiny LMs of the other decoder families (tests/tiny.py), trained with Llama's settings
FAMILIES = ["qwen2", "qwen3", "gemma3", "mistral", "phi3"]
FAMILY_CASES = [pytest.param(m, k, id=f"{m}-{k}") for m in METHODS for k in FAMILIES]


def test_every_registered_method_is_in_the_matrix():
    assert set(SETTINGS) == set(METHODS)


def build(method: str, kind: str, **over):
    lr, options, _ = SETTINGS[method]["llama" if kind in FAMILIES else kind]
    settings = MethodSettings(lr=lr, total_steps=20, warmup_steps=1, seed=3, options=options)
    for k, v in over.items():
        settings = MethodSettings(**{**settings.__dict__, k: v})
    return build_method(method, make_model(kind), settings)


def eval_loss(method, batch) -> float:
    method.model.eval()
    with torch.no_grad():
        return float(forward_loss(method.model, batch))


def logits(model, batch) -> torch.Tensor:
    model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_loss_decreases_on_a_fixed_batch(method, kind):
    m, batch = build(method, kind, schedule="constant"), make_batch(kind)
    before = eval_loss(m, batch)
    for _ in range(SETTINGS[method][kind][2]):
        result = m.step([batch])
        assert torch.isfinite(torch.tensor(result.loss))
    assert eval_loss(m, batch) < before - 1e-3


def assert_only_the_trainable_state_changed(m, before: dict[str, torch.Tensor]) -> None:
    trained = {t.untyped_storage().data_ptr() for t in m.trainable_state().values()}
    after = m.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    allowed = {k for k, v in after.items() if v.untyped_storage().data_ptr() in trained}
    assert changed, "nothing trained"
    assert changed <= allowed, f"changed outside the trainable state: {changed - allowed}"
    assert len(allowed) < len(after) or m.name == "backprop"


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_tensors_outside_the_trainable_state_keep_their_bits(method, kind):
    m, batch = build(method, kind), make_batch(kind)
    before = {k: v.clone() for k, v in m.model.state_dict().items()}
    m.step([batch])
    m.step([batch])
    assert_only_the_trainable_state_changed(m, before)


@pytest.mark.parametrize(("method", "kind"), FAMILY_CASES)
def test_every_family_trains_with_every_method(method, kind):
    """Qwen2 (q, k, v biases, a sliding-window layer), Qwen3 (q/k norms), Gemma 3 ((1 + w)
    norms around each branch, scaled embeddings, tied head), Mistral (sliding window), Phi-3
    (fused projections): each method's units, hooks and adapters find their modules."""
    m, batch = build(method, kind, schedule="constant"), make_batch(kind)
    before = {k: v.clone() for k, v in m.model.state_dict().items()}
    loss = eval_loss(m, batch)
    for _ in range(SETTINGS[method]["llama"][2]):
        assert torch.isfinite(torch.tensor(m.step([batch]).loss))
    assert eval_loss(m, batch) < loss - 1e-3
    assert_only_the_trainable_state_changed(m, before)


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_same_seed_gives_same_parameters(method, kind):
    batch = make_batch(kind)
    a, b = build(method, kind), build(method, kind)
    for _ in range(2):
        a.step([batch])
        b.step([batch])
    sa, sb = a.trainable_state(), b.trainable_state()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_trainable_state_round_trips_through_safetensors(method, kind, tmp_path):
    batch = make_batch(kind)
    m = build(method, kind)
    m.step([batch])
    m.step([batch])
    save_file({k: v.contiguous() for k, v in m.trainable_state().items()}, tmp_path / "t.st")
    fresh = build(method, kind)
    assert not torch.equal(logits(fresh.model, batch), logits(m.model, batch))
    fresh.load_trainable_state(load_file(tmp_path / "t.st"))
    torch.testing.assert_close(logits(fresh.model, batch), logits(m.model, batch))
    exported = m.export_model()
    torch.testing.assert_close(
        logits(exported, batch), logits(m.model, batch), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_state_dict_resume_is_bit_identical(method, kind):
    batches = [make_batch(kind, seed=s) for s in range(4)]
    m = build(method, kind)
    for b in batches[:2]:
        m.step([b])
    buffer = io.BytesIO()
    torch.save({"trainable": m.trainable_state(), "state": m.state_dict()}, buffer)
    straight = [m.step([b]).loss for b in batches[2:]]

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    r = build(method, kind)
    r.load_trainable_state(saved["trainable"])
    r.load_state_dict(saved["state"])
    resumed = [r.step([b]).loss for b in batches[2:]]
    assert resumed == straight
    sa, sb = m.trainable_state(), r.trainable_state()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
