"""End to end in Flower's Simulation Engine: a client dies mid-round, the round completes and
its worker is replaced; the run resumes from its round checkpoint; MeZO clients send only
seeds (through the CLI); Ray listens on loopback only; Ctrl-C stops `federate` and Ray."""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import typer
from typer.testing import CliRunner

from edgetune.commands import OVERRIDES
from edgetune.commands.federate import federate
from edgetune.federated.simulate import simulate


def test_a_client_dies_mid_round_then_the_run_resumes(fl_config):
    # Execute: partition 1's process exits in the middle of its local steps in round 1; one
    # Ray actor serves both clients, so every later client is sent to the actor that died
    run = {**fl_config, "federated.rounds": 2, "federated.timeout": 900}  # fresh actors load
    first = simulate({**run, "federated.crash_client": 1, "federated.crash_round": 1}, cpus=1)
    # Assert: round 1 still aggregated the survivor, and the failure is on record; Ray
    # restarted the actor, so round 2 has both clients (Flower alone would reuse the dead one)
    r1 = next(r for r in first["rounds"] if r["round"] == 1)
    assert r1["clients_aggregated"] == 1 and len(r1["failed"]) == 1
    assert "global_eval" in r1
    r2 = next(r for r in first["rounds"] if r["round"] == 2)
    assert r2["clients_aggregated"] == 2 and not r2["failed"]
    out = Path(fl_config["out"])
    assert (out / "checkpoints" / "step-000002" / "trainable.safetensors").is_file()
    for png in ("fl_metric.png", "fl_bytes.png", "fl_time.png"):
        assert (out / png).stat().st_size > 1000
    # Execute: three rounds asked, two done: only round 3 runs, from the round-2 checkpoint
    second = simulate({**run, "federated.rounds": 3, "federated.resume": True})
    rounds = {r["round"]: r for r in second["rounds"]}
    assert set(rounds) >= {1, 2, 3} and rounds[3]["clients_aggregated"] == 2
    assert rounds[1]["failed"] == r1["failed"]  # the log carried over
    assert len(rounds[3]["client_eval"]) == 2  # each client scored the global model
    row = next(c for c in second["clients"] if c["round"] == 3)
    assert row["bytes_up"] > 0 and row["bytes_down"] > 0 and row["tokens_per_s"] > 0
    assert row["comm_s"] > 0 and row["compute_comm_ratio"] > 0
    # the report's rounds line up: round r holds round r's clients and the evaluation after
    # it; the evaluation before training is round 0, which no client trained in
    assert [r["round"] for r in second["per_round"]] == [1, 2, 3]
    assert [r["clients"] for r in second["per_round"]] == [1, 2, 2]
    for r in second["per_round"]:
        assert r["metric"] == rounds[r["round"]]["global_eval"] and r["bytes_up"] > 0
    assert "global_eval" in next(r for r in first["rounds"] if r["round"] == 0)


def test_mezo_sends_seeds_through_the_cli(fl_config):
    app = typer.Typer()
    app.command(context_settings=OVERRIDES)(federate)
    sets = [f"{k}={v}" for k, v in fl_config.items() if k not in ("out", "train.method")]
    result = CliRunner().invoke(app, ["--method", "mezo", "--out", fl_config["out"], *sets])
    assert result.exit_code == 0, result.output
    data = json.loads((Path(fl_config["out"]) / "federated.json").read_text())
    assert data["compress"] == "seeds"
    ups = [c["bytes_up"] for c in data["clients"] if c["status"] == "accepted"]
    assert len(ups) == 2 and max(ups) < 2_000  # 2 steps: seeds, gradients, lrs and headers
    assert (Path(fl_config["out"]) / "model" / "config.json").is_file()


def test_summarization_with_lora_and_fedadam(fl_config, tiny_llama):
    run = {**fl_config, "model.name": str(tiny_llama), "data.name": "email-subjects",
           "data.task": "summarize", "data.seq_len": 48, "data.train_samples": 48,
           "data.eval_samples": 4, "train.method": "lora", "train.batch_size": 4,
           "federated.strategy": "fedadam", "federated.generate_samples": 2,
           "federated.compress": "int8"}  # fmt: skip
    result = simulate(run)
    last = next(r for r in result["rounds"] if r["round"] == 1)
    assert last["clients_aggregated"] == 2
    assert {"rougeL", "perplexity"} <= set(last["global_eval"])
    assert all("loss" in c for c in last["client_eval"])
    up = max(c["bytes_up"] for c in result["clients"])
    assert up < 0.02 * result["full_weights_bytes"]  # int8 LoRA deltas only


def test_ray_listens_on_loopback_and_ctrl_c_stops_federate_and_ray(fl_config):
    """Ray's GCS, raylet and workers listened on every interface (the host's address taken as
    the node's); they must listen on loopback only. And Flower's ServerApp thread and workers
    outlived a KeyboardInterrupt: `federate` went on after Ctrl-C. It must end with status 130
    and leave no Ray process behind."""
    sets = [f"{k}={v}" for k, v in fl_config.items() if k not in ("out", "federated.rounds")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgetune.cli", "federate", "--out", fl_config["out"],
         "--rounds", "3", *sets],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    deadline = time.monotonic() + 300

    def ray() -> list[psutil.Process]:  # GCS, raylet, client actors
        return psutil.Process(proc.pid).children(recursive=True)

    # the ServerApp thread logs round 1 while the main thread still starts Ray
    while not any("ClientApp" in p.name() for p in ray()) and time.monotonic() < deadline:
        assert proc.poll() is None, "".join(lines)
        time.sleep(0.5)
    started = ray()
    assert any("raylet" in p.name() for p in started)
    listening = {(p.name(), c.laddr.ip) for p in started if p.is_running()
                 for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN}  # fmt: skip
    assert {name for name, _ in listening} >= {"raylet", "gcs_server"}, listening
    addresses = {ipaddress.ip_address(ip) for _, ip in listening}
    assert all((getattr(a, "ipv4_mapped", None) or a).is_loopback for a in addresses), listening
    proc.send_signal(signal.SIGINT)
    try:
        status = proc.wait(90)
    except subprocess.TimeoutExpired:
        proc.kill()
        status = None
    left = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for p in left:
        p.kill()
    assert status == 130 and not left
