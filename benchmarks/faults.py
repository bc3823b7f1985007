"""Faults a device in the field meets, injected into real processes as an operator would:
kills at each phase of a run, a full disk, memory caps, two runs on one folder, a dead and a
stalled federated client, Ctrl-C and kill -9 of `federate`, poisoned updates. Each row says
what happened (exit status, the last line), what was kept, and whether that is what
docs/faults.md promises; the faults CI injects itself are run here through their tests.

    .venv/bin/python benchmarks/faults.py                     # every fault
    .venv/bin/python benchmarks/faults.py kill-during disk    # some of them

It writes benchmarks/results/faults.json and faults.md, and puts the same table into
docs/faults.md between its `faults.py` markers (one table; tests/test_faults.py checks that
the two agree). Runs use the tests' tiny random BERT (tests/tiny.py) on 256 rows of
reuters-r8, one thread; the memory-cap row loads SmolLM2-135M.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs" / "faults.md"
BEGIN, END = "<!-- faults.py: begin -->", "<!-- faults.py: end -->"
sys.path.insert(0, str(ROOT / "tests"))

MODEL: Path  # the tiny BERT folder, made in main()
DATA = ["--data", "reuters-r8", "data.train_samples=256", "data.eval_samples=32",
        "data.seq_len=32", "train.batch_size=8", "train.threads=1"]  # fmt: skip
STEPS = ["train.max_steps=12", "train.save_every=4", "train.final_eval=false"]

# a finetune whose second checkpoint write stops after its first file (for kill -9 there)
SLOW_SAVE = """
import sys, time
import edgetune.checkpoint as ck
from edgetune.cli import main
real, calls = ck.save_file, []
def save_file(tensors, path):
    real(tensors, path)
    calls.append(path)
    if len(calls) == 2:
        print("FAULT: inside the second checkpoint's write", flush=True)
        time.sleep(600)
ck.save_file = save_file
sys.argv = ["edgetune", *sys.argv[1:]]
main()
"""


def cli(*args: str, code: str | None = None, **kw) -> subprocess.Popen:
    head = ["-c", code] if code else ["-m", "edgetune.cli"]
    kw = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, **kw}
    return subprocess.Popen([sys.executable, *head, *args], text=True, **kw)


def finetune(out: Path, *extra: str, code: str | None = None, **kw) -> subprocess.Popen:
    return cli("finetune", "--model", str(MODEL), *DATA, *STEPS, *extra, "--out", str(out),
               code=code, **kw)  # fmt: skip


def finished(proc: subprocess.Popen, limit: float = 900) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=limit)
    return proc.returncode, out


def last_line(out: str) -> str:
    lines = [x.strip() for x in out.strip().splitlines() if x.strip()]
    return lines[-1][:220] if lines else ""


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen, limit: float = 600) -> None:
    deadline = time.monotonic() + limit
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the run ended or stalled before the fault: {proc.returncode}")
        time.sleep(0.05)


def losses(run: Path) -> list[float]:
    return json.loads((run / "metrics.json").read_text())["train"]["loss_history"]


def steps_logged(run: Path) -> int:
    jsonl = run / "metrics.jsonl"
    return len(jsonl.read_text().splitlines()) if jsonl.is_file() else 0


def checkpoints(run: Path) -> list[str]:
    folder = run / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def reference(work: Path) -> list[float]:
    ref = work.parent / "reference"
    if not (ref / "metrics.json").is_file():
        status, out = finished(finetune(ref))
        assert status == 0, out
    return losses(ref)


def row(fault: str, ok: bool | None, happens: str, kept: str, ci: str, **details) -> dict:
    return {"fault": fault, "ok": ok, "happens": happens, "kept": kept, "ci": ci, **details}


def fault_kill_before(work: Path) -> dict:
    run = work / "r"
    proc = finetune(run, "train.save_every=8", "train.log_every=1")
    wait_until(lambda: steps_logged(run) >= 2, proc)
    proc.kill()
    proc.wait()
    left = sorted(p.name for p in run.iterdir())
    resumed, out_r = finished(cli("finetune", "--out", str(run), "--resume"))
    again, out_a = finished(finetune(run, "train.save_every=8"))
    same = again == 0 and losses(run) == reference(work)
    return row("kill -9 before the first checkpoint", resumed == 1 and same,
               f"`--resume`: exit {resumed}, \"{last_line(out_r)}\"; a new start: exit {again}, "
               f"losses {'equal to' if same else 'NOT equal to'} an uninterrupted run's",
               f"nothing (left {', '.join(left)}; cleaned by the new start)",
               "tests/test_faults.py (a killed first checkpoint, simulated)",
               resume_status=resumed, restart_status=again, equal=same)  # fmt: skip


def fault_kill_during(work: Path) -> dict:
    run = work / "r"
    proc = finetune(run, code=SLOW_SAVE)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("FAULT:"):
            break
    half = [p.name for p in (run / "checkpoints").glob(".step-*.tmp")]
    proc.kill()
    proc.wait()
    status, out = finished(cli("finetune", "--out", str(run), "--resume"))
    same = status == 0 and losses(run) == reference(work)
    tmp = [str(p) for p in run.rglob("*.tmp")]
    return row("kill -9 while a checkpoint is written", same and bool(half) and not tmp,
               f"`--resume`: exit {status}, losses {'equal to' if same else 'NOT equal to'} "
               f"an uninterrupted run's; the half-written {', '.join(half) or '(none seen)'} "
               f"{'removed' if not tmp else 'LEFT'}",
               "the checkpoint before (step-000004)", "script only",
               status=status, half_written=half, tmp_left=tmp)  # fmt: skip


def fault_kill_after(work: Path) -> dict:
    run = work / "r"
    proc = finetune(run, "train.log_every=1")
    wait_until(lambda: (run / "checkpoints" / "step-000004").is_dir()
               and steps_logged(run) >= 6, proc)  # fmt: skip
    proc.kill()
    proc.wait()
    kept = checkpoints(run)
    status, out = finished(cli("finetune", "--out", str(run), "--resume"))
    same = status == 0 and losses(run) == reference(work)
    return row("kill -9 between checkpoints (step 6)", same,
               f"`--resume`: exit {status}, losses {'equal to' if same else 'NOT equal to'} "
               "an uninterrupted run's", ", ".join(kept),
               "tests/test_train.py (kill -9, SIGTERM, Ctrl-C)", status=status,
               saved=kept)  # fmt: skip


def fault_concurrent(work: Path) -> dict:
    run = work / "r"
    a, b = finetune(run), finetune(run)
    (sa, oa), (sb, ob) = finished(a), finished(b)
    first, second = (oa, ob) if sa == 0 else (ob, oa)
    complete = (run / "metrics.json").is_file() and len(losses(run)) == 12
    ok = sorted([sa, sb]) == [0, 1] and "another edgetune run" in second and complete
    return row("two `finetune` started at once on one `--out`", ok,
               f"exit {sa} and {sb}; the second: \"{last_line(second)}\"",
               "the first run's files, complete" if complete else "MIXED",
               "tests/test_faults.py", statuses=[sa, sb])  # fmt: skip


def fault_disk(work: Path) -> dict:
    disk = work / "disk"
    disk.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                           capture_output=True, text=True)  # fmt: skip
    if mount.returncode:
        return row("disk full (a 1 MiB tmpfs)", None, f"not run: {mount.stderr.strip()}", "",
                   "tests/test_faults.py (where the process may mount)")  # fmt: skip
    try:
        status, out = finished(finetune(disk / "r"))
        tmp = [str(p) for p in disk.rglob("*.tmp")]
        folder = (disk / "r").exists()
    finally:
        subprocess.run(["umount", str(disk)], check=True)
    line = last_line(out)
    ok = status == 1 and "disk full while writing" in line and not tmp and not folder
    return row("disk full at the first checkpoint (a 1 MiB tmpfs)", ok,
               f"exit {status}, \"{line}\"",
               "no folder, no `.tmp`" if not (tmp or folder) else f"LEFT {tmp or 'the folder'}",
               "tests/test_faults.py (where the process may mount)", status=status)  # fmt: skip


def fault_memory(work: Path) -> dict:
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (int(2.5e9), int(2.5e9)))

    proc = cli("finetune", "--model", "smollm2-135m", "--data", "instructions",
               "train.batch_size=8", "train.max_steps=2", "train.threads=1",
               "--out", str(work / "capped"), preexec_fn=cap)  # fmt: skip
    status, out = finished(proc)
    line = last_line(out)
    ok = status == 1 and line.startswith("error: out of memory") and "Traceback" not in out
    return row("address space capped (`ulimit -v` 2.5 GB, SmolLM2-135M, batch 8)", ok,
               f"exit {status}, \"{line[:90]}...\"",
               "no folder" if not (work / "capped").exists() else "the run folder",
               "tests/test_faults.py (the message, simulated)", status=status)  # fmt: skip


def pytest_row(fault: str, happens: str, kept: str, *nodes: str) -> Callable[[Path], dict]:
    def run(work: Path) -> dict:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               *nodes], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
        summary = last_line(done.stdout)
        ok = None if "skipped" in summary and "passed" not in summary else done.returncode == 0
        return row(fault, ok, f"{happens} (test: {summary})", kept,
                   ", ".join(dict.fromkeys(n.split("::")[0] for n in nodes)))  # fmt: skip

    return run


def _stopped(args: list[str], ready: str, sig: int, limit: float = 600) -> tuple[int | None, list]:
    """Start `edgetune *args`, wait until one of its descendants' command lines holds `ready`
    (a client at work), send `sig`; its exit status and the descendants still running 20 s
    later."""
    proc = cli(*args, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + limit

    def children() -> list[psutil.Process]:
        try:
            return psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            return []

    def command(p: psutil.Process) -> str:
        try:
            line = p.cmdline()
        except psutil.Error:  # gone, or a zombie
            return ""
        return " ".join(Path(a).name if "/" in a else a for a in line[1:2] or line[:1] if a)

    def working() -> bool:
        return any(ready in command(p) for p in children())

    wait_until(working, proc, deadline - time.monotonic())
    started = children()
    proc.send_signal(sig)
    try:
        status: int | None = proc.wait(90)
    except subprocess.TimeoutExpired:
        proc.kill()
        status = None
    time.sleep(20)
    left = [c for c in (command(p) for p in started) if c]  # neither gone nor a zombie
    end = time.monotonic() + 100
    while any(command(p) for p in started) and time.monotonic() < end:
        time.sleep(1)
    if left:
        left.append(f"{'all gone' if time.monotonic() < end else 'some still there'} "
                    f"{time.monotonic() - end + 120:.0f} s after the signal")  # fmt: skip
    for p in started:
        with contextlib.suppress(psutil.Error):
            p.kill()
    return status, left


def fl_args(work: Path, rounds: int) -> list[str]:
    return ["--model", str(MODEL), *DATA[:2], "data.train_samples=128", "data.eval_samples=32",
            "data.seq_len=32", "train.batch_size=8", "train.threads=1", "--local-steps", "2",
            "--rounds", str(rounds), "--out", str(work / "fl")]  # fmt: skip


def fault_sigint(work: Path) -> dict:
    status, left = _stopped(["federate", *fl_args(work, 3)], "ClientApp", signal.SIGINT)
    ok = status == 130 and not left
    return row("Ctrl-C of `federate` (simulation) while its clients train", ok,
               f"exit {status}; {len(left)} Ray processes left {left if left else ''}",
               "the round checkpoints written", "tests/federated/test_fl_simulation.py",
               status=status, left=left)  # fmt: skip


def fault_deploy_kill(work: Path) -> dict:
    status, left = _stopped(["federate", *fl_args(work, 3), "--deploy", "local"],
                            "flwr-clientapp", signal.SIGKILL)  # fmt: skip
    return row("kill -9 of `federate --deploy local` while its clients train", not left,
               f"exit {status}; SuperLink/SuperNode processes left: {left or 'none'}",
               "the round checkpoints written", "tests/federated/test_fl_deploy.py",
               status=status, left=left)  # fmt: skip


def _deployed(work: Path, during: Callable, timeout: int = 90) -> tuple[dict, float]:
    from edgetune.federated.deploy import deploy_local

    run = {"model.name": str(MODEL), "data.name": "reuters-r8", "data.train_samples": 128,
           "data.eval_samples": 32, "data.seq_len": 32, "train.batch_size": 8,
           "train.threads": 1, "federated.clients": 2, "federated.min_clients": 2,
           "federated.rounds": 2, "federated.local_steps": 2, "federated.timeout": timeout,
           "out": str(work / "fl")}  # fmt: skip
    start = time.monotonic()
    return deploy_local(run, timeout=1200, during=during), time.monotonic() - start


def _when(log: Path, text: str, count: int = 1, limit: float = 600) -> None:
    deadline = time.monotonic() + limit
    while log.read_text().count(text) < count and time.monotonic() < deadline:
        time.sleep(0.2)


def _rounds(result: dict) -> str:
    return "; ".join(f"round {r['round']}: {r.get('clients_aggregated') or 0} of 2 aggregated, "
                     f"failed {[f['reason'] for f in r['failed']]}"
                     for r in result["rounds"] if r["round"] > 0)  # fmt: skip


def fault_dead_client(work: Path) -> dict:
    def kill_after_round_1(procs) -> None:
        _when(procs.logs / "supernode-1.log", "Receiving: train message")
        _when(procs.logs / "supernode-1.log", "Receiving: evaluate message")
        procs.stop("supernode-1", signal.SIGKILL)

    result, wall = _deployed(work, kill_after_round_1)
    r2 = next(r for r in result["rounds"] if r["round"] == 2)
    ok = r2.get("clients_aggregated") == 1 and len(r2["failed"]) == 1
    return row("a SuperNode killed after round 1 (deployment, `min_clients` 2, timeout 90 s)",
               ok, f"{_rounds(result)}; exit 0 after {wall:.0f} s",
               "every round's aggregate and checkpoint", "tests/federated/test_fl_strategy.py",
               rounds=result["rounds"])  # fmt: skip


def fault_slow_client(work: Path) -> dict:
    def stall_in_round_1(procs) -> None:
        _when(procs.logs / "supernode-1.log", "Receiving: train message")
        procs.stop("supernode-1", signal.SIGSTOP)
        time.sleep(120)  # past federated.timeout
        procs.stop("supernode-1", signal.SIGCONT)

    result, wall = _deployed(work, stall_in_round_1)
    r1 = next(r for r in result["rounds"] if r["round"] == 1)
    ok = r1.get("clients_aggregated") == 1 and len(r1["failed"]) == 1
    return row("a SuperNode stalled 120 s in round 1 (SIGSTOP; deployment, timeout 90 s)", ok,
               f"{_rounds(result)}; exit 0 after {wall:.0f} s",
               "round 1's aggregate of the others; every round checkpoint",
               "tests/federated/test_fl_strategy.py (the timeout)",
               rounds=result["rounds"])  # fmt: skip


FAULTS: dict[str, Callable[[Path], dict]] = {
    "kill-before": fault_kill_before,
    "kill-during": fault_kill_during,
    "kill-after": fault_kill_after,
    "concurrent": fault_concurrent,
    "disk": fault_disk,
    "memory": fault_memory,
    "guard": pytest_row(
        "memory taken by another process in the run's cgroup (900 MiB limit)",
        "the memory guard stops the run at a step's end: exit 75, one line; `--resume` ends it",
        "a checkpoint of the step it stopped at",
        "tests/measure/test_guard.py::"
        "test_under_an_enforced_cgroup_limit_the_run_stops_saved_instead_of_being_killed",
    ),
    "corrupt": pytest_row(
        "4 KiB zeroed inside a checkpoint's tensors; a hostile pickle in `state.pt`",
        "refused at `--resume` in one line, naming the file; the pickle's code never runs",
        "the other checkpoints",
        "tests/test_faults.py::test_a_checkpoint_with_zeroed_bytes_is_refused",
        "tests/test_faults.py::test_a_hostile_pickle_is_refused_in_one_line",
    ),
    "sigint": fault_sigint,
    "deploy-kill": fault_deploy_kill,
    "dead-client": fault_dead_client,
    "slow-client": fault_slow_client,
    "poisoned": pytest_row(
        "poisoned updates (NaN, wrong shapes, x5000 of an honest update)",
        "rejected before aggregation, logged with the reason; the others averaged",
        "the other updates",
        "tests/federated/test_fl_strategy.py::test_fedavg_of_valid_updates_and_rejections",
        "tests/federated/test_fl_strategy.py::"
        "test_an_update_scaled_x5000_is_rejected_against_its_peers",
    ),
}


def table(results: dict[str, dict]) -> str:
    rows = ["| fault | what happens (measured) | what is kept | as documented | in CI |",
            "|---|---|---|---|---|"]  # fmt: skip
    for r in results.values():
        verdict = {True: "yes", False: "**no**", None: "not run"}[r["ok"]]
        cells = [r["fault"], r["happens"], r["kept"], verdict, r["ci"]]
        rows.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(rows) + "\n"


def write_docs(md: str) -> None:
    text = DOCS.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOCS.write_text(f"{head}{BEGIN}\n{md}{END}{tail}")


def main() -> None:
    global MODEL
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("faults", nargs="*", help=f"some of: {', '.join(FAULTS)} (default: all)")
    names = parser.parse_args().faults or list(FAULTS)
    unknown = set(names) - set(FAULTS)
    if unknown:
        parser.error(f"unknown fault(s) {sorted(unknown)}; choose from {', '.join(FAULTS)}")
    import tiny

    results = {}
    with tempfile.TemporaryDirectory(prefix="edgetune-faults-") as tmp:
        MODEL = tiny.folder("bert", Path(tmp) / "tiny-bert", num_labels=8)
        for name in names:
            work = Path(tmp) / name
            work.mkdir()
            print(f"-- {name}", flush=True)
            start = time.monotonic()
            try:
                results[name] = FAULTS[name](work)
            except Exception as e:  # a fault the script could not inject is a failed row
                results[name] = row(name, False, f"the script failed: {e!r}"[:200], "", "")
            results[name]["wall_s"] = round(time.monotonic() - start, 1)
            results[name] = json.loads(json.dumps(results[name]).replace(tmp, "$TMP"))
            print(json.dumps(results[name]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    previous = RESULTS / "faults.json"
    if len(names) < len(FAULTS) and previous.is_file():  # a partial run updates its rows
        results = {**json.loads(previous.read_text()), **results}
        results = {k: results[k] for k in FAULTS if k in results}
    previous.write_text(json.dumps(results, indent=1))
    md = table(results)
    (RESULTS / "faults.md").write_text(md)
    write_docs(md)
    print(md)
    sys.exit(0 if all(r["ok"] is not False for r in results.values()) else 1)


if __name__ == "__main__":
    main()
