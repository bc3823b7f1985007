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
