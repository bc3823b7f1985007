"""Where a run computes and in which dtype: accelerators that are not there are refused in one
line, `auto` says what it chose, autocast reaches held layers, fp16 scales its loss."""

import pytest
import tiny
import torch

from edgetune.errors import EdgetuneError
from edgetune.methods.base import MethodSettings
from edgetune.methods.options import LoraOptions
from edgetune.methods.registry import build_method
from edgetune.placement import cpu_has_bf16, place, resolve_device

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is here")
def test_an_accelerator_that_is_not_there_is_refused_naming_the_choices():
    with pytest.raises(EdgetuneError, match="sees no CUDA GPU; use auto or cpu"):
        resolve_device("cuda")
    assert resolve_device("auto").type in ("cpu", "mps")


def test_auto_dtype_follows_the_processor_and_says_why():
    p = place("cpu", "auto")
    assert p.dtype == ("bf16" if cpu_has_bf16() else "fp32")
    assert p.describe().startswith(f"cpu, {p.dtype} (auto: ")
    assert place("cpu", "fp32").describe() == "cpu, fp32"


def test_bf16_compute_runs_matrix_products_in_bf16_and_keeps_fp32_weights():
    model = tiny.model("llama")
    with place("cpu", "bf16").compute():
        logits = model(**tiny.batch("llama")).logits
    assert logits.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_fp16_scales_the_loss_and_checkpoints_the_scale():
    settings = MethodSettings(lr=1e-3, total_steps=3, options=LoraOptions(), loss_scale=True)
    method = build_method("lora", tiny.model("llama"), settings)
    with place("cpu", "fp16").compute():
        result = method.step([tiny.batch("llama")])
    assert torch.isfinite(torch.tensor(result.loss))
    state = method.state_dict()
    assert "scaler" in state and state["scaler"]["scale"] > 0
    method.load_state_dict(state)


@needs_cuda
def test_a_lora_step_over_a_held_base_runs_on_the_gpu(tmp_path):
    from edgetune.models.loader import load_model

    folder = tiny.folder("llama", tmp_path / "llama")
    model = load_model(str(folder), "lm", weights="q4_0").model.to("cuda")
    method = build_method("lora", model, MethodSettings(lr=1e-3, total_steps=1,
                                                        options=LoraOptions()))  # fmt: skip
    batch = {k: v.to("cuda") for k, v in tiny.batch("llama").items()}
    with place("cuda", "bf16").compute():
        assert torch.isfinite(torch.tensor(method.step([batch]).loss))
