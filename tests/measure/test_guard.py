"""The memory guard: a run stops, saved, before it would run out of memory, and resumes.

One test runs a real run in a real memory cgroup (root and cgroup v1's memory controller,
as on this project's CI machines; skipped elsewhere): another process in the same cgroup takes
the room while the run trains, and the run must end in one line with a checkpoint instead of
being killed by the kernel, then resume to the end once the room is back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edgetune.config import load_config
from edgetune.errors import MemoryStop
from edgetune.measure import guard as guard_module
from edgetune.measure.guard import MemoryGuard
from edgetune.measure.memory import peak_rss_mb
from edgetune.train import finetune

V1 = Path("/sys/fs/cgroup/memory")


def _args(model, data, out, *extra):
    return [f"model.name={model}", f"data.name={data}", "data.task=classify", "data.seq_len=16",
            "train.batch_size=8", "train.final_eval=false", f"out={out}", *extra]  # fmt: skip


def test_a_guard_stops_a_run_saved_and_it_resumes_bit_for_bit(
    tiny_bert, topics_jsonl, tmp_path, monkeypatch
):
    """A budget the run's measured memory crosses (here: the guard told that less is free than
    is) stops it at a step's end with a checkpoint and exit code 75; resumed, it ends where an
    uninterrupted run ends."""
    whole = finetune(load_config(None, _args(tiny_bert, topics_jsonl, tmp_path / "whole",
                                             "train.max_steps=6")))  # fmt: skip
    out = tmp_path / "r"
    steps = []
    real = MemoryGuard.after_step

    def tight_after_step(self):
        steps.append(1)  # from the third step's end on, the room is gone
        return real(self) if len(steps) < 3 else real(_shrunk(self))

    monkeypatch.setattr(MemoryGuard, "after_step", tight_after_step)
    cfg = load_config(None, _args(tiny_bert, topics_jsonl, out, "train.max_steps=6",
                                  "train.budget=64GB", "train.save_every=100"))  # fmt: skip
    with pytest.raises(MemoryStop, match=r"stopped after step 3 of 6 .*--resume") as err:
        finetune(cfg)
    assert err.value.exit_code == 75
    assert (out / "checkpoints" / "step-000003").is_dir()
    monkeypatch.setattr(MemoryGuard, "after_step", real)
    resumed = finetune(cfg, resume=True)
    assert resumed.metrics["train"]["loss_history"] == whole.metrics["train"]["loss_history"]


def _shrunk(guard: MemoryGuard) -> MemoryGuard:
    """The same guard with a limit just under what the process holds now."""
    return MemoryGuard(peak_rss_mb() * 2**20 * 0.5, guard.limit_name, guard.cgroup)


def test_the_guard_names_what_sets_its_limit(monkeypatch):
    monkeypatch.setattr(guard_module, "cgroup_limit", lambda: None)
    assert MemoryGuard.for_run(None, None) is None
    g = MemoryGuard.for_run(2**30, "the budget of 1 GiB")
    assert g is not None and not g.cgroup and g.limit == 2**30
    monkeypatch.setattr(guard_module, "cgroup_limit", lambda: 2**29)
    g = MemoryGuard.for_run(2**30, "the budget of 1 GiB")
    assert g is not None and g.cgroup and g.limit == 2**29 and "cgroup" in g.limit_name


HOG = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    group, target, ready = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    (group / "cgroup.procs").write_text(str(__import__("os").getpid()))
    def working_set():
        usage = int((group / "memory.usage_in_bytes").read_text())
        stat = dict(l.split() for l in (group / "memory.stat").read_text().splitlines())
        return usage - int(stat["total_inactive_file"])
    held = []
    while working_set() + (4 << 20) < target:
        held.append(bytearray(4 << 20))  # zero-filled: resident at once
    ready.write_text("full")
    time.sleep(600)
""")


@pytest.fixture
def memory_cgroup():
    """A fresh cgroup v1 memory group (needs root), removed after the test."""
    if os.geteuid() != 0 or not (V1 / "cgroup.procs").exists():
        pytest.skip("needs root and cgroup v1's memory controller")
    group = V1 / f"edgetune-test-{os.getpid()}"
    try:
        group.mkdir()
    except OSError as e:
        pytest.skip(f"cannot make a memory cgroup here: {e}")
    yield group
    for pid in (group / "cgroup.procs").read_text().split():
        subprocess.run(["kill", "-9", pid], check=False)
    time.sleep(0.5)
    group.rmdir()


def test_under_an_enforced_cgroup_limit_the_run_stops_saved_instead_of_being_killed(
    tiny_bert, topics_jsonl, tmp_path, memory_cgroup
):
    limit = 900 * 2**20
    (memory_cgroup / "memory.limit_in_bytes").write_text(str(limit))
    out = tmp_path / "r"
    cmd = [sys.executable, "-m", "edgetune.cli", "finetune", "--model", str(tiny_bert),
           "--data", str(topics_jsonl), "--out", str(out), "data.task=classify",
           "data.seq_len=16", "train.batch_size=8", "train.max_steps=400", "train.save_every=1000",
           "train.final_eval=false", "train.threads=1"]  # fmt: skip

    def join():
        (memory_cgroup / "cgroup.procs").write_text(str(os.getpid()))

    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preexec_fn=join)  # fmt: skip
    jsonl = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and run.poll() is None:
        if jsonl.is_file() and len(jsonl.read_text().splitlines()) >= 5:
            break
        time.sleep(0.1)
    assert run.poll() is None, run.communicate()
    ready = tmp_path / "hog-ready"
    hog = subprocess.Popen([sys.executable, "-c", HOG, str(memory_cgroup),
                            str(int(limit * 0.985)), str(ready)])  # fmt: skip
    try:
        _stdout, stderr = run.communicate(timeout=300)
    finally:
        hog.kill()
        hog.wait()
    # not killed (-9): ended by the guard, in one line, saved
    assert run.returncode == 75, stderr
    assert stderr.count("error:") == 1 and "Traceback" not in stderr
    assert "before running out of memory" in stderr and "cgroup's memory limit" in stderr
    steps = [json.loads(line)["step"] for line in jsonl.read_text().splitlines()]
    saved = sorted((out / "checkpoints").iterdir())
    assert saved and saved[-1].name == f"step-{steps[-1]:06d}" and steps[-1] < 400
    # the room is back: the run resumes to its end
    resumed = subprocess.run([*cmd[:4], "--out", str(out), "--resume"], capture_output=True,
                             text=True, timeout=600, preexec_fn=join)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "metrics.json").read_text())["train"]["steps"] == 400
