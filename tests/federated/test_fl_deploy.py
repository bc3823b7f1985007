"""The deployed mode: a SuperLink and SuperNodes as separate processes on loopback, driven by
`flwr run`; one test over TLS, one that kills a SuperNode in the middle of a round."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from edgetune.federated.deploy import Processes, deploy_local, make_certificates


def test_the_tls_key_is_private_and_never_written_through_a_link(tmp_path):
    paths = make_certificates(tmp_path / "certs")
    assert stat.S_IMODE(paths["key"].stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "certs").stat().st_mode) == 0o700
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "server.key").symlink_to(tmp_path / "stolen.key")
    with pytest.raises(FileExistsError):  # an existing folder (or file) is not reused
        make_certificates(planted)
    assert not (tmp_path / "stolen.key").exists()


LAUNCHER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from edgetune.federated.deploy import Processes
    with Processes(Path(sys.argv[1]), dict(os.environ)) as procs:
        # a child that starts its own subprocess (as a SuperNode its ClientApp)
        pid = Path(sys.argv[1]) / "grandchild.pid"
        child = procs.start("child", ["sh", "-c", f"sleep 600 & echo $! > {pid}; wait"])
        while not pid.is_file() or not pid.read_text().strip():
            time.sleep(0.05)
        print(child.pid, pid.read_text().strip(), flush=True)
        time.sleep(600)
    """
)


def _alive(pid: int) -> bool:
    try:  # a zombie nobody reaped yet is dead too
        return "\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_children_die_with_a_launcher_killed_with_sigkill(tmp_path):
    """`kill -9` of `federate --deploy local` runs no cleanup: the kernel must take the
    SuperLink and SuperNodes down with it, and the watchdog the subprocesses they started
    (Flower's ClientApps), or they keep running and holding their ports."""
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(tmp_path)],
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert launcher.stdout is not None
    pids = [int(p) for p in launcher.stdout.readline().split()]
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    os.kill(launcher.pid, signal.SIGKILL)
    launcher.wait()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = [p for p in pids if _alive(p)]
    for p in alive:
        os.kill(p, signal.SIGKILL)
    assert not alive


def test_deployed_run_over_tls_end_to_end(fl_config):
    before = set(Path(tempfile.gettempdir()).glob("edgetune-tls-*"))
    result = deploy_local(fl_config, tls=True, timeout=400)
    # the keys lived in a fresh private folder, removed at the end
    assert set(Path(tempfile.gettempdir()).glob("edgetune-tls-*")) == before
    assert not list(Path(fl_config["out"]).rglob("server.key"))
    r1 = next(r for r in result["rounds"] if r["round"] == 1)
    assert r1["clients_aggregated"] == 2 and not r1["failed"] and not r1["rejected"]
    assert len(r1["client_eval"]) == 2 and "accuracy" in r1["global_eval"]
    ups = [c["bytes_up"] for c in result["clients"]]
    assert len(ups) == 2 and min(ups) > 0


def test_killing_a_supernode_mid_round_does_not_stop_the_run(fl_config):
    def kill_when_training(procs: Processes) -> None:
        # wait until supernode-1 has pulled its training message, then kill its whole group
        log = procs.logs / "supernode-1.log"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and "Receiving: train message" not in log.read_text():
            time.sleep(0.2)
        procs.stop("supernode-1", signal.SIGKILL)

    run = {**fl_config, "federated.clients": 3, "federated.timeout": 40,
           "federated.local_steps": 4}  # fmt: skip
    result = deploy_local(run, timeout=400, during=kill_when_training)
    r1 = next(r for r in result["rounds"] if r["round"] == 1)
    assert r1["clients_aggregated"] == 2  # the round completed with the two survivors
    assert "accuracy" in r1["global_eval"]
