"""Sizes and durations for people: the one parser of memory sizes (`--budget 256MB`) and the
formatters every table and forecast line uses."""

from __future__ import annotations

import re

from edgetune.errors import EdgetuneError

_BYTES = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip


def parse_bytes(text: str | float | int) -> float:
    """Bytes from `256MB` (decimal), `1.5GiB` (binary), `2e8` or a number; case-insensitive.
    A size must be positive."""
    if isinstance(text, bool):
        raise EdgetuneError(f"cannot read {text!r} as a memory size; write e.g. 256MB or 1.5GiB")
    if isinstance(text, int | float):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", str(text).lower())
        if not m or m[2] not in _BYTES:
            raise EdgetuneError(
                f"cannot read {text!r} as a memory size; write e.g. 256MB or 1.5GiB"
            )
        value = float(m[1]) * _BYTES[m[2]]
    if value <= 0:
        raise EdgetuneError(f"a memory size must be positive, got {text!r}")
    return value


def human(n: float | None, unit: str = "", base: int = 1000) -> str:
    """1.23G, 45.6M ...; base 1024 gives binary prefixes (KiB, MiB, GiB)."""
    if n is None:
        return "?"
    for p in ("", "K", "M", "G", "T", "P"):
        if abs(n) < 1000 or p == "P":
            if not p:
                return f"{n:.0f}{unit}"
            return f"{n:.3g}{p}{'i' if base == 1024 else ''}{unit}"
        n /= base
    return f"{n}"


def human_bytes(n: float) -> str:
    """`12.3 MiB`: one decimal, binary units."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def seconds(s: float | None) -> str:
    """`45.6 ms`, `3.2 s`, `12.5 min`, `2.1 h`; `unknown` for None."""
    if s is None:
        return "unknown"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    if s < 120:
        return f"{s:.3g} s"
    if s < 7200:
        return f"{s / 60:.3g} min"
    return f"{s / 3600:.3g} h"
