"""The faults CI cannot inject, run as an operator would: kills, a memory cap, a full disk, a
dead SuperNode, Ctrl-C and kill -9 of `edgetune federate`. Each prints what happened against
what docs/faults.md says, and the whole writes benchmarks/results/faults.json and faults.md.

    .venv/bin/python benchmarks/faults.py               # every fault (about 15 minutes)
    .venv/bin/python benchmarks/faults.py kill memory   # some of them

Faults (names as on the command line):
- kill: `finetune` killed with SIGKILL after its first checkpoint, then `--resume`: the loss
  history must equal an uninterrupted run's, bit for bit.
- memory: `finetune` of SmolLM2-135M at batch 8 under an address-space cap (RLIMIT_AS 2.5 GB):
  exit status 1 and one line, "error: out of memory".
- disk: `finetune` writing into a 1 MiB tmpfs (needs root): one line, "disk full while
  writing", and no `.tmp` left.
- sigint: Ctrl-C of `federate` (simulation) in round 1: exit status 130, no Ray process left.
- deploy-kill: SIGKILL of `federate --deploy local`: no SuperLink or SuperNode left.
- dead-client: a SuperNode killed between rounds with `federated.min_clients` = clients: the
  next round goes on after `federated.timeout` with the others and records the dead one.
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TINY = ["--model", "minilm-l6", "--data", "reuters-r8", "data.train_samples=256",
        "data.eval_samples=64", "data.seq_len=32", "train.batch_size=8"]  # fmt: skip
FL = ["--model", "minilm-l6", "--data", "reuters-r8", "data.train_samples=128",
      "data.eval_samples=32", "data.seq_len=32", "train.batch_size=8", "train.threads=1",
      "--local-steps", "2"]  # fmt: skip


def edgetune(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgetune.cli", *args], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)  # fmt: skip


def finished(proc: subprocess.Popen, limit: float = 900) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=limit)
    return proc.returncode, out


def wait_for(path: Path, limit: float = 600) -> None:
    deadline = time.monotonic() + limit
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.5)


def alive(procs: list[psutil.Process]) -> list[str]:
    return [p.name() for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def fault_kill(work: Path) -> dict:
    steps = ["train.max_steps=12", "train.save_every=4", "train.final_eval=false"]
    ref = work / "ref"
    finished(edgetune("finetune", *TINY, *steps, "--out", str(ref)))
    run = work / "killed"
    proc = edgetune("finetune", *TINY, *steps, "--out", str(run))
    wait_for(run / "checkpoints" / "step-000004")
    proc.kill()
    proc.wait()
    status, out = finished(edgetune("finetune", "--out", str(run), "--resume"))
    same = (json.loads((ref / "metrics.json").read_text())["train"]["loss_history"]
            == json.loads((run / "metrics.json").read_text())["train"]["loss_history"])  # fmt: skip
    return {"ok": status == 0 and same, "status": status, "loss_history_equal": same}


def fault_memory(work: Path) -> dict:
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (int(2.5e9), int(2.5e9)))

    status, out = finished(edgetune("finetune", "--model", "smollm2-135m", "--data",
                                    "instructions", "train.batch_size=8", "train.max_steps=2",
                                    "--out", str(work / "capped"), preexec_fn=cap))  # fmt: skip
    last = out.strip().splitlines()[-1] if out.strip() else ""
    return {"ok": status == 1 and last.startswith("error: out of memory"), "status": status,
            "last_line": last}  # fmt: skip


def fault_disk(work: Path) -> dict:
    disk = work / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)]).returncode:
        return {"ok": None, "skipped": "mounting a tmpfs needs root"}
    try:
        status, out = finished(edgetune("finetune", *TINY, "train.max_steps=4",
                                        "--out", str(disk / "r")))  # fmt: skip
        left = [str(p) for p in disk.rglob("*.tmp")]
    finally:
        subprocess.run(["umount", str(disk)], check=True)
    last = out.strip().splitlines()[-1]
    return {"ok": status == 1 and "disk full while writing" in last and not left,
            "status": status, "last_line": last, "tmp_left": left}  # fmt: skip


def _stopped(args: list[str], ready: str, sig: int, limit: float = 600) -> tuple[int | None, list]:
    """Start `edgetune *args`, wait for a line holding `ready`, send `sig`; its exit status
    and the descendants still running 30 s later."""
    proc = edgetune(*args)
    assert proc.stdout is not None
    deadline = time.monotonic() + limit
    for line in proc.stdout:
        if ready in line or time.monotonic() > deadline:
            break
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(sig)
    try:
        status: int | None = proc.wait(90)
    except subprocess.TimeoutExpired:
        proc.kill()
        status = None
    time.sleep(30)
    return status, alive(children)


def fault_sigint(work: Path) -> dict:
    status, left = _stopped(["federate", *FL, "--rounds", "3", "--out", str(work / "sim")],
                            "[ROUND 1/3]", signal.SIGINT)  # fmt: skip
    return {"ok": status == 130 and not left, "status": status, "left": left}


def fault_deploy_kill(work: Path) -> dict:
    status, left = _stopped(["federate", *FL, "--deploy", "local", "--rounds", "3",
                             "--out", str(work / "dep")], "", signal.SIGKILL, 5)  # fmt: skip
    return {"ok": not left, "status": status, "left": left}


def fault_dead_client(work: Path) -> dict:
    from edgetune.federated.deploy import Processes, deploy_local

    def kill_after_round_1(procs: Processes) -> None:
        log = procs.logs / "supernode-1.log"
        while log.read_text().count("Receiving: evaluate message") < 1:
            time.sleep(0.5)
        procs.stop("supernode-1", signal.SIGKILL)

    run = {"model.name": "minilm-l6", "data.name": "reuters-r8", "data.train_samples": 128,
           "data.eval_samples": 32, "data.seq_len": 32, "train.batch_size": 8,
           "train.threads": 1, "federated.clients": 2, "federated.min_clients": 2,
           "federated.rounds": 2, "federated.local_steps": 2, "federated.timeout": 60,
           "out": str(work / "dead")}  # fmt: skip
    start = time.monotonic()
    result = deploy_local(run, timeout=1800, during=kill_after_round_1)
    r2 = next(r for r in result["rounds"] if r["round"] == 2)
    return {"ok": r2.get("clients_aggregated") == 1 and len(r2["failed"]) == 1,
            "round_2": {k: r2.get(k) for k in ("clients_aggregated", "failed")},
            "wall_s": time.monotonic() - start}  # fmt: skip


FAULTS = {"kill": fault_kill, "memory": fault_memory, "disk": fault_disk,
          "sigint": fault_sigint, "deploy-kill": fault_deploy_kill,
          "dead-client": fault_dead_client}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("faults", nargs="*", help=f"some of: {', '.join(FAULTS)} (default: all)")
    names = parser.parse_args().faults or list(FAULTS)
    unknown = set(names) - set(FAULTS)
    if unknown:
        parser.error(f"unknown fault(s) {sorted(unknown)}; choose from {', '.join(FAULTS)}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="edgetune-faults-") as tmp:
        for name in names:
            work = Path(tmp) / name
            work.mkdir()
            print(f"-- {name}", flush=True)
            results[name] = FAULTS[name](work)
            print(json.dumps(results[name]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "faults.json").write_text(json.dumps(results, indent=1))
    rows = ["| fault | as documented | details |", "|---|---|---|"]
    for name, r in results.items():
        verdict = {True: "yes", False: "**no**", None: "not run"}[r["ok"]]
        rows.append(f"| {name} | {verdict} | "
                    f"{json.dumps({k: v for k, v in r.items() if k != 'ok'})} |")  # fmt: skip
    (RESULTS / "faults.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))
    sys.exit(0 if all(r["ok"] is not False for r in results.values()) else 1)


if __name__ == "__main__":
    main()
