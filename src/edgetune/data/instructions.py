"""`instructions`: a small instruction-tuning set built from the bundled data (chat task).

Two kinds of turns, in the manner of PockEngine's Llama-2 instruction fine-tuning demo:

- "Write a subject line for this email." over an email body of `email-subjects` (target: its
  subject line);
- "Which topic is this Reuters story? Answer with one word: ..." over a `reuters-r8` story
  (target: its topic).

The instruction comes *after* the source text because a decoder-only prompt that is too long
keeps its last tokens (`edgetune.data.tasks.prompt_ids`); sources are cut to `WORDS` words so the
instruction survives short contexts. Each split is built from the same split of both sources,
interleaved, so held-out prompts never come from training rows. Registered in
`edgetune.data.registry.DATASETS` as `instructions`.
"""

from __future__ import annotations

from collections.abc import Callable

from edgetune.data.rows import Rows

WORDS = 60  # source words kept per prompt
PER_SPLIT = {"train": 1200, "validation": 100, "test": 100}  # rows per source and split
EMAIL = "{text}\n\nWrite a subject line for this email."
TOPIC = "{text}\n\nWhich topic is this Reuters story? Answer with one word: {topics}."


def _cut(text: str) -> str:
    words = text.split()
    return " ".join(words[:WORDS]) + (" ..." if len(words) > WORDS else "")


def build(load_bundled: Callable[[str], dict[str, Rows]]) -> dict[str, list[dict]]:
    """The splits: email and Reuters turns interleaved, `PER_SPLIT` rows of each per split;
    `load_bundled(name)` gives the source sets' splits."""
    emails, reuters = load_bundled("email-subjects"), load_bundled("reuters-r8")
    topics = ", ".join(sorted(set(reuters["train"]["label"])))
    out: dict[str, list[dict]] = {}
    for split in PER_SPLIT:
        n = PER_SPLIT[split]
        mail = [
            {"text": EMAIL.format(text=_cut(r["text"])), "target": r["target"]}
            for r in emails[split].select(range(min(n, len(emails[split]))))
        ]
        news = [
            {"text": TOPIC.format(text=_cut(r["text"]), topics=topics), "target": r["label"]}
            for r in reuters[split].shuffle(seed=0).select(range(min(n, len(reuters[split]))))
        ]
        rows = [r for pair in zip(mail, news, strict=False) for r in pair]
        rows += mail[len(news) :] + news[len(mail) :]
        out[split] = rows
    return out
