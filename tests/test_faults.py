"""Faults a device meets: corrupt or hostile checkpoints, a second run on the same folder, a
process killed before its first checkpoint, a sequence the model cannot hold, memory running
out. Each ends in one clear line or a run that can go on, never silent damage."""

from __future__ import annotations

import hashlib
import json
import pickle
import subprocess
import sys
import textwrap

import pytest

from edgetune.config import load_config
from edgetune.errors import EdgetuneError
from edgetune.train import finetune


def _cfg(model, data, out, *extra):
    return load_config(None, [f"model.name={model}", f"data.name={data}", "data.task=classify",
                              "data.seq_len=16", "train.batch_size=8", "train.max_steps=4",
                              "train.save_every=2", f"out={out}", *extra])  # fmt: skip


def test_a_checkpoint_with_zeroed_bytes_is_refused(tiny_bert, topics_jsonl, tmp_path):
    """Bytes zeroed inside the tensors keep the file's size and header: only the checksum
    stored at save time can tell, and it does."""
    out = tmp_path / "r"
    finetune(_cfg(tiny_bert, topics_jsonl, out))
    ckpt = sorted((out / "checkpoints").iterdir())[-1]
    data = bytearray((ckpt / "trainable.safetensors").read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = bytes(4096)
    (ckpt / "trainable.safetensors").write_bytes(bytes(data))
    with pytest.raises(EdgetuneError, match="trainable.safetensors does not match its checksum"):
        finetune(_cfg(tiny_bert, topics_jsonl, out, "train.max_steps=6"), resume=True)


def test_a_hostile_pickle_is_refused_in_one_line(tiny_bert, topics_jsonl, tmp_path):
    class Hostile:
        def __reduce__(self):
            return (print, ("code ran while loading a checkpoint",))

    out = tmp_path / "r"
    finetune(_cfg(tiny_bert, topics_jsonl, out))
    ckpt = sorted((out / "checkpoints").iterdir())[-1]
    hostile = pickle.dumps({"method": Hostile()})
    (ckpt / "state.pt").write_bytes(hostile)
    # whoever can write the file can write its checksum too: the loader must still refuse
    meta = json.loads((ckpt / "checkpoint.json").read_text())
    meta["sha256"]["state.pt"] = hashlib.sha256(hostile).hexdigest()
    (ckpt / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(EdgetuneError, match="refused"):
        finetune(_cfg(tiny_bert, topics_jsonl, out, "train.max_steps=6"), resume=True)


HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from edgetune.io import exclusive
    folder = Path(sys.argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    with exclusive(folder):
        print("held", flush=True)
        time.sleep(60)
    """
)


def test_a_second_run_on_the_same_folder_is_refused(tiny_bert, topics_jsonl, tmp_path):
    out = tmp_path / "r"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(EdgetuneError, match=rf"another edgetune run \(pid {holder.pid}\)"):
            finetune(_cfg(tiny_bert, topics_jsonl, out))
        assert out.is_dir()  # the refused run removed nothing of the other's
    finally:
        holder.kill()
        holder.wait()
    result = finetune(_cfg(tiny_bert, topics_jsonl, out))  # the lock went with the process
    assert result.metrics["train"]["steps"] == 4


def test_a_run_killed_before_its_first_checkpoint_starts_again(tiny_bert, topics_jsonl, tmp_path):
    """What a kill -9 in the middle of the first checkpoint leaves (config.yaml, the record of
    the first steps and a half-written `.step-*.tmp` folder) neither blocks a new start nor
    survives it."""
    out = tmp_path / "r"
    (out / "checkpoints" / ".step-000002.abc123.tmp").mkdir(parents=True)
    (out / "checkpoints" / ".step-000002.abc123.tmp" / "state.pt").write_bytes(b"half")
    (out / "config.yaml").write_text("out: r\n")
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "lo')
    with pytest.raises(EdgetuneError, match="start it again without --resume"):
        finetune(_cfg(tiny_bert, topics_jsonl, out), resume=True)
    result = finetune(_cfg(tiny_bert, topics_jsonl, out))
    assert result.metrics["train"]["steps"] == 4
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in records] == result.metrics["train"]["loss_history"]
    assert not list(out.rglob("*.tmp"))
    (out / "checkpoints" / ".step-000009.dead.tmp").mkdir()  # a later write killed
    finetune(_cfg(tiny_bert, topics_jsonl, out, "train.max_steps=6"), resume=True)
    assert not list(out.rglob("*.tmp"))


def test_a_folder_of_other_files_is_not_taken_over(tiny_bert, topics_jsonl, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(EdgetuneError, match="not an edgetune run"):
        finetune(_cfg(tiny_bert, topics_jsonl, out))
    assert (out / "notes.txt").read_text() == "mine"


def test_a_sequence_longer_than_the_model_s_positions_is_refused_at_once(
    tiny_bert, topics_jsonl, tmp_path
):
    with pytest.raises(EdgetuneError, match="longer than the 64 positions"):
        finetune(_cfg(tiny_bert, topics_jsonl, tmp_path / "r", "data.seq_len=100000"))
    assert not (tmp_path / "r").exists()


def test_running_out_of_memory_is_one_line(monkeypatch, capsys):
    """What torch's CPU allocator raises under a memory cap (seen under `ulimit -v` on
    SmolLM2: docs/training.md) ends in one line and exit status 1."""
    import edgetune.cli as cli

    def allocation_fails() -> None:
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 1073741824 bytes. Error code 12"
        )

    monkeypatch.setattr(cli, "app", allocation_fails)
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory") and len(err.strip().splitlines()) == 1
    monkeypatch.setattr(cli, "app", lambda: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):  # other errors are not disguised
        cli.main()


def test_the_evaluation_s_batch_fits_the_budget(tiny_llama, tmp_path, fixed_overhead):
    """The evaluation ran at a fixed batch of 32 whatever the budget: a causal LM's logits at
    32 rows need four times the step's peak here. Under a budget it runs at the largest batch
    whose forecast fits, with the same scores."""

    def run(out, *extra):
        return finetune(load_config(None, [
            f"model.name={tiny_llama}", "data.name=email-subjects", "data.task=summarize",
            "data.seq_len=48", "data.train_samples=16", "data.eval_samples=8",
            "train.method=lora", "train.batch_size=4", "train.max_steps=1", f"out={out}",
            *extra])).metrics  # fmt: skip

    around = fixed_overhead / 2**20  # MiB of the process around the step
    budgeted = run(tmp_path / "budget", f"train.budget={int(fixed_overhead + 40 * 2**20)}")
    fc = budgeted["forecast"]
    assert fc["peak_mb"] < 40 and 1 < fc["eval_batch"] < 32 and fc["eval_peak_mb"] <= around + 40
    free = run(tmp_path / "free")
    assert free["forecast"]["eval_batch"] == 32 and free["forecast"]["eval_peak_mb"] > around + 40
    assert budgeted["eval"]["loss"] == pytest.approx(free["eval"]["loss"], rel=1e-4)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (needs root and a kernel that lets this process mount)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip("mounting a tmpfs needs root (benchmarks/faults.py runs it as a script)")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(
    tiny_bert, topics_jsonl, small_disk
):
    out = small_disk / "r"
    with pytest.raises(EdgetuneError, match="disk full while writing"):
        finetune(_cfg(tiny_bert, topics_jsonl, out))
    # no half-written checkpoint, and a run with no checkpoint leaves no folder
    assert not list(small_disk.rglob("*.tmp")) and not out.exists()


def test_the_docs_fault_table_is_the_measured_one():
    """docs/faults.md carries the table benchmarks/faults.py measured, not a copy that drifts;
    every test the table names as running in CI exists."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    docs = (root / "docs" / "faults.md").read_text()
    begin, end = "<!-- faults.py: begin -->\n", "<!-- faults.py: end -->"
    measured = (root / "benchmarks" / "results" / "faults.md").read_text()
    assert docs[docs.index(begin) + len(begin) : docs.index(end)] == measured
    rows = [line.split(" | ") for line in measured.splitlines()[2:]]
    assert rows and all(len(r) == 5 for r in rows)
    named = {p.split(" ")[0] for r in rows for p in r[-1].rstrip(" |").split(", ")}
    assert all((root / p).is_file() for p in named if p.startswith("tests/")), named
