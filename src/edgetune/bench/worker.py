"""Run one measurement in a fresh Python interpreter and get its JSON result back.

    result = run_worker("edgetune.bench.methods:worker", spec, threads=2)
    result = run_worker("benchmarks/planning.py:worker", spec)     # a script's function

The target is `module:function` or `file.py:function`; the function takes the JSON-able `spec`
and returns a JSON-able dict, printed as the child's last line of output. A fresh process per
configuration is what makes a peak RSS that configuration's own. A child that fails (a
diverging loss, a crash, a timeout) comes back as {"error": message}, never as an exception,
so one failed configuration does not end a benchmark.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def run_worker(
    target: str,
    spec: Mapping[str, Any],
    threads: int | None = None,
    timeout: float | None = 3600,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """`target(spec)` in a fresh interpreter (`threads` OpenMP threads, extra `env`, at most
    `timeout` seconds, None: no limit). A failure's `error` is the child's last line of
    stderr; `stderr` holds its last 3,000 characters."""
    environ = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    if threads:
        environ["OMP_NUM_THREADS"] = str(threads)
    args = [sys.executable, "-m", "edgetune.bench.worker", target, json.dumps(spec)]
    try:
        proc = subprocess.run(args, env=environ, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"error": tail[0][-300:], "stderr": proc.stderr[-3000:]}
    return json.loads(lines[-1])


def resolve(target: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The function a `module:function` or `path/file.py:function` target names."""
    where, _, name = target.rpartition(":")
    if where.endswith(".py"):
        path = Path(where)
        spec = importlib.util.spec_from_file_location(f"_bench_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    return getattr(module, name)


if __name__ == "__main__":
    print(json.dumps(resolve(sys.argv[1])(json.loads(sys.argv[2]))))
