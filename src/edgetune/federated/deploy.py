"""A real Flower deployment on this machine: one SuperLink and N SuperNodes, each its own
process, talking HTTP on loopback, and the app submitted with `flwr run`.

    deploy_local(run_config, clients=2)   # what `edgetune federate --deploy local` runs

Steps: free loopback ports -> `flower-superlink` -> `flower-supernode` i with
`--node-config "partition-id=i num-partitions=N"` -> a minimal app folder (pyproject.toml whose
components are `edgetune.federated.server_app:app` and `client_app:app`, run config inline)
-> `flwr run <app> edgetune-local --stream` with a private FLWR_HOME holding the connection ->
the server writes federated.json -> every process is stopped. With `tls=True` a throw-away CA
and a server certificate for 127.0.0.1 are made (`make_certificates`), the SuperLink serves
HTTPS and the SuperNodes and the CLI verify it with `--root-certificates`. On real devices run
the same commands by hand (docs/federated.md).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from edgetune.errors import EdgetuneError
from edgetune.federated.task import check_partition, forget_sessions, settings

APP_ID = ("edgetune", "edgetune-federated")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def write_app(folder: Path, run_config: Mapping[str, Any]) -> Path:
    """A Flower app folder whose components live in the installed edgetune package."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        "[build-system]", 'requires = ["hatchling"]', 'build-backend = "hatchling.build"', "",
        "[project]", f'name = "{APP_ID[1]}"', 'version = "1.0.0"', "dependencies = []", "",
        "[tool.flwr.app]", f'publisher = "{APP_ID[0]}"', "",
        "[tool.flwr.app.components]",
        'serverapp = "edgetune.federated.server_app:app"',
        'clientapp = "edgetune.federated.client_app:app"', "",
        "[tool.flwr.app.config]",
        *(f'"{k}" = {_toml_value(v)}' for k, v in run_config.items() if v is not None),
    ]  # fmt: skip
    (folder / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return folder


def make_certificates(folder: Path) -> dict[str, Path]:
    """A self-signed CA and a server certificate/key for 127.0.0.1 and localhost (PEM), in
    `folder`, which must not exist yet: it is made private (0700) and the key is written 0600
    by a call that refuses to follow a link or reuse a file, so nobody else reads the key and
    nothing planted at its path is written through."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(mode=0o700, parents=True)  # FileExistsError for anything already there
    now = datetime.datetime.now(datetime.UTC)

    def cert(subject: str, key, issuer_name, issuer_key, ca: bool):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, server_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgetune test CA")])
    ca = cert("edgetune test CA", ca_key, ca_name, ca_key, True)
    server = cert("127.0.0.1", server_key, ca_name, ca_key, False)
    paths = {"ca": folder / "ca.crt", "cert": folder / "server.pem", "key": folder / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    key = server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())  # fmt: skip
    fd = os.open(paths["key"], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return paths


def _die_with_parent(parent: int):
    """A `preexec_fn` for a child that must not outlive this process, even killed with
    SIGKILL (no `finally` runs then): Linux sends the child SIGKILL when its parent dies
    (`prctl(PR_SET_PDEATHSIG)`); the ports it held are freed with it, and Flower's own
    subprocesses (`flwr-serverapp`, `flwr-clientapp`) watch their parent's pid and follow.
    Elsewhere a no-op."""

    def arm() -> None:
        if not sys.platform.startswith("linux"):
            return
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the request was armed
            os._exit(1)

    return arm


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


# Reads process group ids, one a line, from its stdin, which only the launcher holds open: at
# end of file (the launcher died, even by SIGKILL) it kills every group; "exit" dismisses it.
WATCHDOG = """
import os, signal, sys
groups = []
for line in sys.stdin:
    if line.strip() == "exit":
        sys.exit(0)
    groups.append(int(line))
for group in groups:
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        pass
"""


class Processes(ExitStack):
    """Child processes that are all stopped (TERM, then KILL) when the block ends, and
    killed if this process dies first: each child by the kernel (`_die_with_parent`), and
    each child's process group, with the subprocesses Flower starts in it, by a watchdog
    process that sees this one's end as the end of a pipe (`WATCHDOG`)."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        super().__init__()
        self.logs, self.env = logs, env
        self.procs: dict[str, subprocess.Popen] = {}
        logs.mkdir(parents=True, exist_ok=True)
        self.watchdog = subprocess.Popen([sys.executable, "-c", WATCHDOG], stdin=subprocess.PIPE,
                                         text=True, start_new_session=True)  # fmt: skip
        self.callback(self._dismiss_watchdog)
        self.callback(self.stop_all)

    def _dismiss_watchdog(self) -> None:
        """Every child is stopped: the watchdog leaves without killing anything."""
        assert self.watchdog.stdin is not None
        try:
            self.watchdog.stdin.write("exit\n")
            self.watchdog.stdin.close()
        except OSError:  # it is gone already
            pass
        self.watchdog.wait(10)

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 - closed by the stack
        self.callback(log.close)
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                start_new_session=True,
                                preexec_fn=_die_with_parent(os.getpid()))  # fmt: skip
        self.procs[name] = proc
        assert self.watchdog.stdin is not None
        self.watchdog.stdin.write(f"{proc.pid}\n")  # its own group: start_new_session
        self.watchdog.stdin.flush()
        return proc

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Signal a child's whole process group (a SuperNode's ClientApp subprocess too)."""
        proc = self.procs[name]
        if proc.poll() is None:
            os.killpg(proc.pid, sig)

    def stop_all(self) -> None:
        for name in self.procs:
            self.stop(name)
        deadline = time.monotonic() + 10
        for name, proc in self.procs.items():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.stop(name, signal.SIGKILL)
                proc.wait(5)


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def deploy_local(
    run_config: Mapping[str, Any],
    tls: bool = False,
    timeout: float = 1800.0,
    during: Any = None,
) -> dict:
    """Run the app on a local SuperLink + N SuperNodes; returns federated.json's content.
    `during(processes)` (optional) is called once the run is submitted: a test uses it to
    kill a SuperNode mid-round."""
    cfg, fed = settings(run_config)
    check_partition(cfg)  # before any process starts
    forget_sessions()  # the server and clients load in their own processes, not this one
    out = Path(cfg.out).resolve()
    work = out / "deploy"
    config = {**run_config, "out": str(out)}  # the ServerApp runs in another folder
    if run_config.get("config"):
        config["config"] = str(Path(str(run_config["config"])).resolve())
    port = free_port()
    env = {**os.environ, "FLWR_HOME": str(work / "flwr-home"), "PYTHONUNBUFFERED": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}  # fmt: skip
    security = ["--insecure"]
    client_security = ["--insecure"]
    connection = f'[superlink.edgetune-local]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    with ExitStack() as cleanup:
        if tls:  # a fresh private folder, removed when the run ends
            certs = make_certificates(Path(tempfile.mkdtemp(prefix="edgetune-tls-")) / "certs")
            cleanup.callback(shutil.rmtree, certs["key"].parents[1], True)
            security = ["--ssl-ca-certfile", str(certs["ca"]), "--ssl-certfile", str(certs["cert"]),
                        "--ssl-keyfile", str(certs["key"])]  # fmt: skip
            client_security = ["--root-certificates", str(certs["ca"])]
            connection = (f'[superlink.edgetune-local]\naddress = "127.0.0.1:{port}"\n'
                          f'root-certificates = "{certs["ca"]}"\n')  # fmt: skip
        home = Path(env["FLWR_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "edgetune-local"\n\n' + connection
        )
        app = write_app(work / "app", config)
        (out / "federated.json").unlink(missing_ok=True)
        with Processes(work / "logs", env) as procs:
            procs.start(
                "superlink",
                [
                    _bin("flower-superlink"),
                    *security,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--disable-runtime-dependency-installation",
                ],
            )
            _wait_for_port(port, procs)
            for i in range(fed.clients):
                procs.start(f"supernode-{i}", [
                    _bin("flower-supernode"), *client_security, "--superlink", f"127.0.0.1:{port}",
                    "--host", "127.0.0.1", "--port", str(free_port()),
                    "--node-config", f"partition-id={i} num-partitions={fed.clients}",
                    "--max-retries", "20", "--max-wait-time", "60"])  # fmt: skip
            runner = procs.start(
                "flwr-run", [_bin("flwr"), "run", str(app), "edgetune-local", "--stream"]
            )
            if during is not None:
                during(procs)
            try:
                runner.wait(timeout)
            except subprocess.TimeoutExpired:
                raise EdgetuneError(f"the deployed run did not finish in {timeout:.0f} s; logs in "
                                    f"{work / 'logs'}") from None  # fmt: skip
            result = out / "federated.json"
            deadline = time.monotonic() + 30  # the ServerApp may still be writing after the stream
            while not result.is_file() and time.monotonic() < deadline:
                time.sleep(0.5)
        if not result.is_file():
            raise EdgetuneError(f"the deployed run ended without a result; logs in {work / 'logs'}")
        return json.loads(result.read_text())


def _wait_for_port(port: int, procs: Processes, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if procs.procs["superlink"].poll() is not None:
            raise EdgetuneError(
                f"the SuperLink exited at start; see {procs.logs / 'superlink.log'}"
            )
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise EdgetuneError(f"the SuperLink did not open port {port} within {limit:.0f} s")
