"""Chat data: conversations rendered by the tokenizer's own chat template, loss on the
assistant turns only, and every cut counted.

Rows arrive in one of three forms and leave `to_messages` as one `messages` column (a list of
{role, content}, roles system, user and assistant):
- `messages`: the TRL / torchtune / OpenAI fine-tuning form, multi-turn;
- `prompt` and `completion`: strings (a user turn and its answer), or message lists (TRL's
  conversational prompt-completion form);
- `text` and `target` (`data.text_column`, `data.target_column`): a user turn and its answer.

**Which tokens are scored.** The template renders the whole conversation once. For assistant
turn i, the rendering of messages[:i] with the generation prompt ends where the answer starts,
and the rendering of messages[:i+1] ends where the turn ends (its end-of-turn tokens included,
so the model learns to stop). Both must be prefixes of the whole rendering, which holds for
every template that renders a turn the same whatever follows it (SmolLM2's, Llama 3's,
Mistral's, Gemma's, Phi-3's); a token is scored when it starts inside that span (the
tokenizer's offsets). No `{% generation %}` markers are needed (SmolLM2's template has none).

**Cuts, never silent** (`Cuts`, per split, printed at load and kept in metrics.json):
- `data.target_len` set: an answer longer than that keeps its first `target_len` tokens and
  ends the example there (no end-of-turn token follows a cut answer, so none is learnt);
- a conversation longer than `seq_len` keeps its whole turns up to the last answer that fits;
  where even the first answer does not fit, the user turns before it lose tokens from the start
  of their content: the template's own tokens (`<|im_start|>user` ...) and the system prompt
  stay;
- an example whose first answer cannot fit even then, or that has no assistant turn, is
  dropped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from edgetune.data.rows import Rows

if TYPE_CHECKING:
    from edgetune.data.rows import Split
from edgetune.errors import EdgetuneError

ROLES = ("system", "user", "assistant")
IGNORE = -100  # label of a position the loss skips (transformers' ignore index)
Message = dict[str, str]
Span = tuple[int, int]  # token positions [start, end)


@dataclass
class Cuts:
    """What fitting a split's examples into `seq_len` (and `target_len`) cut."""

    examples: int = 0  # rows seen
    cut: int = 0  # examples that lost tokens
    tokens: int = 0  # tokens cut, prompts and answers
    answer_tokens: int = 0  # of which scored (answer) tokens
    dropped: int = 0  # examples left out: no answer fits, or none is there

    def line(self, split: str, seq_len: int) -> str:
        return (f"{split}: {self.cut} of {self.examples} examples cut to data.seq_len "
                f"{seq_len} ({self.tokens:,} tokens, {self.answer_tokens:,} of them answer "
                f"tokens), {self.dropped} dropped (no answer fits)")  # fmt: skip

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


# -- rows -> messages ---------------------------------------------------------------------------


def to_messages(ds: Split, columns: dict[str, str], where: str) -> Rows:
    """`ds` as one `messages` column, whichever of the three forms it holds."""
    names = ds.column_names
    text, target = columns.get("text", "text"), columns.get("target", "target")
    if "messages" in names:
        rows = [_checked(m, where, i) for i, m in enumerate(ds["messages"])]
    elif "prompt" in names and "completion" in names:
        rows = [
            _checked(_turns(p, "user") + _turns(c, "assistant"), where, i)
            for i, (p, c) in enumerate(zip(ds["prompt"], ds["completion"], strict=True))
        ]
    elif text in names and target in names:
        rows = [
            _checked(_turns(p, "user") + _turns(c, "assistant"), where, i)
            for i, (p, c) in enumerate(zip(ds[text], ds[target], strict=True))
        ]
    else:
        raise EdgetuneError(
            f"{where} holds no chat data: give a `messages` column, `prompt` and `completion`, "
            f"or {text!r} and {target!r} (--text-column, --target-column); its columns are "
            f"{', '.join(names)}"
        )
    return Rows({"messages": m} for m in rows)


def _turns(value: Any, role: str) -> list[Any]:
    """A string as one turn of `role`; a message list as it is."""
    return [{"role": role, "content": value}] if isinstance(value, str) else list(value or [])


def _checked(messages: Any, where: str, row: int) -> list[Message]:
    if not isinstance(messages, list) or not messages:
        raise EdgetuneError(f"{where} row {row}: messages must be a non-empty list")
    out = []
    for m in messages:
        role = m.get("role") if isinstance(m, dict) else None
        content = m.get("content") if isinstance(m, dict) else None
        if role not in ROLES or not isinstance(content, str):
            raise EdgetuneError(
                f"{where} row {row}: each message needs a role ({', '.join(ROLES)}) and a "
                f"text content, got {str(m)[:80]}"
            )
        out.append({"role": role, "content": content})
    return out


def prompt_of(messages: Sequence[Message]) -> list[Message]:
    """The turns before the last answer: what a model answers in evaluation."""
    return list(messages[: _last_answer(messages)])


def answer_of(messages: Sequence[Message]) -> str:
    """The last answer: the reference that evaluation compares generations with."""
    last = _last_answer(messages)
    return messages[last]["content"] if last < len(messages) else ""


def _last_answer(messages: Sequence[Message]) -> int:
    return max((i for i, m in enumerate(messages) if m["role"] == "assistant"),
               default=len(messages))  # fmt: skip


# -- messages -> tokens ---------------------------------------------------------------------------


def render(tokenizer, messages: Sequence[Message], generation: bool = False) -> str:
    """The conversation as the tokenizer's chat template writes it."""
    if not getattr(tokenizer, "chat_template", None):
        raise EdgetuneError(
            "the model's tokenizer has no chat template, which chat data needs; use an "
            "instruct model, or --task summarize"
        )
    if not messages:
        return ""
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=generation
    )


def encode(
    tokenizer, messages: Sequence[Message], generation: bool = False
) -> tuple[list[int], list[Span], list[Span]]:
    """Token ids of the rendered conversation, the spans of its assistant turns (as the
    template renders them, end-of-turn included) and of its user contents."""
    text = render(tokenizer, messages, generation)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    starts = [s for s, _ in offsets]

    def tokens(lo: int, hi: int) -> Span:  # the tokens that start in text[lo:hi]
        return bisect_left(starts, lo), bisect_left(starts, hi)

    answers, contents = [], []
    for i, m in enumerate(messages):
        before = render(tokenizer, messages[:i], generation=m["role"] == "assistant")
        if m["role"] == "assistant":
            through = render(tokenizer, messages[: i + 1])
            if not (text.startswith(before) and text.startswith(through)):
                raise EdgetuneError(
                    "the tokenizer's chat template renders a turn differently once later turns "
                    "follow it, so its assistant tokens cannot be found; give single-turn rows"
                )
            answers.append(tokens(len(before), len(through)))
        elif m["role"] == "user" and m["content"]:
            lo = text.find(m["content"], len(before))
            if lo >= 0:
                a, b = tokens(lo, lo + len(m["content"]))
                # a token that runs past the content's end belongs to the template too
                if b > a and offsets[b - 1][1] > lo + len(m["content"]):
                    b -= 1
                contents.append((a, b))
    return ids, answers, contents


def cut_content(ids: list[int], contents: Sequence[Span], n: int, before: int) -> list[int] | None:
    """`ids` less the first `n` user-content tokens among those before position `before`
    (None: they hold fewer)."""
    removable = [t for a, b in contents if b <= before for t in range(a, b)][:n]
    if len(removable) < n:
        return None
    gone = set(removable)
    return [t for i, t in enumerate(ids) if i not in gone]


def prompt_ids(tokenizer, messages: Sequence[Message], budget: int) -> list[int]:
    """The tokens a model answers: the turns before the last answer with the generation
    prompt, fitted to `budget` by dropping the earliest turns after the system prompt, then by
    cutting user content from its start (the template's tokens always stay)."""
    turns = prompt_of(messages)
    while True:
        ids, _, contents = encode(tokenizer, turns, generation=True)
        if len(ids) <= budget:
            return ids
        trimmed = cut_content(ids, contents, len(ids) - budget, len(ids))
        if trimmed is not None:
            return trimmed
        first = next((i for i, m in enumerate(turns) if m["role"] != "system"), len(turns))
        if first >= len(turns) - 1:  # one turn left: as short as it gets
            return ids
        turns = turns[:first] + turns[first + 1 :]


def example(
    messages: Sequence[Message], tokenizer, seq_len: int, target_len: int | None, cuts: Cuts
) -> dict[str, list[int]] | None:
    """One training example (input_ids, labels: the answers' tokens, else IGNORE) of at most
    `seq_len` tokens, or None where it is dropped; what is cut is added to `cuts`."""
    cuts.examples += 1
    messages = messages[: _last_answer(messages) + 1]
    if messages[-1]["role"] != "assistant":
        cuts.dropped += 1
        return None
    ids, answers, contents = encode(tokenizer, messages)
    n_ids, n_answer = len(ids), sum(b - a for a, b in answers)
    keep = n_ids
    if target_len is not None:  # the first answer over target_len is cut and ends the example
        long = next(((a, b) for a, b in answers if b - a > target_len), None)
        if long is not None:
            keep = long[0] + target_len
            answers = [(a, min(b, keep)) for a, b in answers if a < keep]
    if keep > seq_len:
        fits = [(a, b) for a, b in answers if b <= seq_len]
        if fits:  # whole turns up to the last answer that fits
            answers, keep = fits, fits[-1][1]
        else:  # one answer, its prompt's user content cut from the start
            a, b = answers[0]
            trimmed = cut_content(ids[:b], contents, b - seq_len, a)
            if trimmed is None:
                cuts.dropped += 1
                return None
            ids, keep = trimmed, seq_len
            answers = [(a - (b - seq_len), seq_len)]
    ids = ids[:keep]
    labels = [IGNORE] * len(ids)
    for a, b in answers:
        labels[a:b] = ids[a:b]
    if len(ids) < n_ids:
        cuts.cut += 1
        cuts.tokens += n_ids - len(ids)
        cuts.answer_tokens += n_answer - sum(b - a for a, b in answers)
    return {"input_ids": ids, "labels": labels}
