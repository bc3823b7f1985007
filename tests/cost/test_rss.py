"""Peak memory of a real training step against the cost model's `memory.peak`.

`_rss_step.py` runs in a fresh interpreter: tiny BERT with an MLM head, one thread; per method
(the runtime's own: backprop, sparse, MeZO with its perturbed copies, PEPITA and MEMPEPITA with
their hooks and passes, hybrid with sparse's step over the top block and MeZO's below it, the
forward gradient's jvp over all parameters and over LoRA) warm-up steps on a tiny batch
(weights, optimizer state, library buffers become resident), a reset of the resident
high-water mark, then two steps. The growth of the high-water mark over the resident set before
the steps is compared with the predicted peak minus weights and optimizer state. glibc's mmap
threshold is fixed (MALLOC_MMAP_THRESHOLD_) so that freed large blocks go back to the system
and the resident set follows the live tensors. The shapes make the step's tensors (tens of MB)
dominate allocator noise (a few MB; see docs/cost-model.md). Linux only (/proc/self/clear_refs).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

METHODS = ["backprop", "sparse", "mezo", "pepita", "mempepita", "hybrid", "forward_grad",
           "forward_grad-lora"]  # fmt: skip


@pytest.fixture(scope="module")
def measured():
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc/self/clear_refs")
    import edgetune

    # the edgetune this test imports (not another install's), and tests/ for `rules`
    path = os.pathsep.join(
        [str(Path(edgetune.__file__).parents[1]), str(Path(__file__).parents[1])]
    )
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": path}  # fmt: skip
    script = Path(__file__).with_name("_rss_step.py")
    out = subprocess.run([sys.executable, str(script), "8", "256", *METHODS], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("method", METHODS)
def test_peak_rss_within_15_percent(measured, method):
    m = measured[method]
    assert m["measured"] > 10 * 2**20  # the step itself, not noise
    assert m["predicted"] == pytest.approx(m["measured"], rel=0.15)


def test_heap_peak_sees_a_forward_s_live_tensors_and_not_freed_ones():
    import torch

    from edgetune.measure.memory import HeapPeak, heap_in_use_mb

    if heap_in_use_mb() is None:
        pytest.skip("glibc's mallinfo2 is not available")

    class Big(torch.nn.Module):
        def forward(self, x):
            return x + torch.ones(16 * 2**20)  # a 64 MiB result, alive until the caller drops it

    big, base = Big(), heap_in_use_mb()
    with HeapPeak() as peak:
        y = big(torch.zeros(1))
        assert peak.peak_mb >= base + 60
        del y
    after = peak.peak_mb
    assert heap_in_use_mb() < base + 60  # freed: out of the live heap again
    big(torch.zeros(1))  # outside the context: not sampled
    assert peak.peak_mb == after


_CHUNKED = """
import json, torch
from torch import nn
from edgetune.cost.graph import Tape
from edgetune.measure.memory import peak_since_reset, reset_peak
from edgetune.methods.chunked_loss import chunked_cross_entropy
from edgetune.precision import dense_chunk
torch.set_num_threads(1)
n, d, V = 512, 128, 49152
head = nn.Linear(d, V, bias=False).requires_grad_(False)
h = torch.randn(n, d, requires_grad=True)
t = torch.randint(0, V, (n,))
out = {}
for _ in range(2):  # the second: library buffers resident
    b = reset_peak()
    loss = chunked_cross_entropy(h, t, head)
    out["forward"] = peak_since_reset() - b
    b = reset_peak()
    loss.backward()
    out["backward"] = peak_since_reset() - b
    h.grad = None
tape = Tape(4)
x = tape.new(n * d, True)
tape.chunked_head(x, n, d, V, dense_chunk(V, d) // d, None)
out["forward_predicted"] = tape.events[-2].out_bytes  # the chunk's logits
out["backward_predicted"] = tape.events[-1].grad_in  # dL/dh and the chunk again
print(json.dumps(out))
"""


def test_the_chunked_loss_holds_the_chunk_the_model_counts():
    """The chunked loss's forward and backward grow the resident set by what `Tape.chunked_head`
    counts: one chunk of fp32 logits (and dL/dh in the backward), measured on a 49k vocabulary
    whose chunk (32 MiB) dominates allocator noise."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc/self/clear_refs")
    import edgetune

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(edgetune.__file__).parents[1])}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", _CHUNKED], env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    m = json.loads(out.stdout.strip().splitlines()[-1])
    assert m["forward_predicted"] > 30 * 2**20
    assert m["forward"] == pytest.approx(m["forward_predicted"], rel=0.15)
    assert m["backward"] == pytest.approx(m["backward_predicted"], rel=0.15)
