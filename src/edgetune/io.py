"""Files: atomic writes (a file is either absent or complete, never half-written) and the one
reader of YAML files.

What is written gets the permissions of a plain `open()` under the user's umask (a temporary
file or folder starts private, 0600 / 0700, and is opened up before it is renamed into place),
so a model folder written by one user can be served by another.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from edgetune.errors import EdgetuneError


def _disk_error(path: Path, e: OSError) -> EdgetuneError:
    if e.errno == errno.ENOSPC:
        return EdgetuneError(f"disk full while writing {path}; nothing was left half-written")
    return EdgetuneError(f"cannot write {path}: {e.strerror or e}")


def _os_error(e: BaseException) -> OSError | None:
    """`e` as an OSError: itself, or the one a Rust library (safetensors, tokenizers) reports
    only in its message, `(os error 28)`; None for any other error."""
    if isinstance(e, OSError):
        return e
    found = re.search(r"\(os error (\d+)\)", str(e))
    return OSError(int(found[1]), os.strerror(int(found[1]))) if found else None


def umask() -> int:
    """The process's file-mode creation mask."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _open_up(path: Path) -> None:
    """The permissions `open()` / `mkdir()` would have given `path` under the umask (what a
    folder holds was written with them already)."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask())


def read_yaml(path: Path, what: str) -> Any:
    """The content of a YAML file, or one clear error naming `what` it is (config file, scheme
    file) when it is missing or not YAML."""
    if not path.is_file():
        raise EdgetuneError(f"{what} not found: {path}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise EdgetuneError(f"{what} {path} is not valid YAML: {e}") from None


@contextmanager
def exclusive(folder: Path, what: str = "run"):
    """Hold `folder/.lock` (an exclusive, non-blocking `flock`) while the block runs: a second
    process asking for the same folder is refused at once, naming the holder's pid. The lock
    goes with the process, however it ends (kill -9 included)."""
    path = folder / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise EdgetuneError(
                f"another edgetune {what} (pid {holder}) is writing to {folder}; wait for it "
                "to end, or give another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call write(tmp) on a temporary name beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        _open_up(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if (error := _os_error(e)) is not None:
            raise _disk_error(path, error) from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


@contextmanager
def atomic_dir(path: Path):
    """Yield a temporary folder beside `path`; on success it replaces `path` in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        _open_up(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if (error := _os_error(e)) is not None:
            raise _disk_error(path, error) from None
        raise
