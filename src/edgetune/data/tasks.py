"""Turn text rows into model inputs for each task, and batch them.

- classify: `text` -> input_ids; `label` -> class id (from the train split's sorted names).
  With label words (`data.label_words`), the text goes into `data.prompt` (truncated so the
  prompt's end survives) and the class is read at its `{mask}`: a masked LM sees its mask token
  there, a causal LM's prompt ends before it (`label_word_ids` are the words' first tokens).
- lm: every text, ended by EOS, concatenated and cut into blocks of `seq_len` tokens.
- summarize: decoder-only models see `text + SUMMARY_PROMPT + target` with the loss on the
  target only; encoder-decoder models map "summarize: text" to target.
- chat: conversations (`messages`) through the tokenizer's chat template, loss on the
  assistant turns only (`edgetune.data.chat`).

What fitting examples into `seq_len` cuts (summarize, chat) is counted per split in
`TaskData.cuts`, never silent.

Token sequences are held as int32 arrays: 4 bytes a token where a list of Python ints costs
about 36 (an 8-byte pointer and a 28-byte int object each), so a tokenized data set takes a
ninth of the memory it would.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from edgetune.config import DataConfig
from edgetune.data import chat
from edgetune.data.chat import IGNORE, Cuts
from edgetune.data.load import TextData
from edgetune.errors import EdgetuneError
from edgetune.families import DECODER, ENCODER, ENCODER_DECODER

if TYPE_CHECKING:
    from edgetune.data.rows import Split

SUMMARY_PROMPT = "\nSubject:"  # decoder-only summarization cue, followed by the target
Example = dict[str, np.ndarray | int]  # token sequences (int32), or a class id


@dataclass
class TaskData:
    """Tokenized splits and what the loop needs to know about them."""

    task: str
    splits: dict[str, list[Example]]
    labels: list[str]  # class names (classify), else empty
    raw: dict[str, Split]  # the text rows, for generation-based evaluation (summarize, chat; else
    # empty: a large corpus is not held twice)
    cuts: dict[str, Cuts] = field(default_factory=dict)  # per split (summarize, chat)
    word_ids: list[int] | None = None  # each class's label word's first token (label_words)

    def cut_lines(self, seq_len: int) -> list[str]:
        """One line per split whose examples lost tokens or were dropped."""
        return [f"{self.task} data, {c.line(s, seq_len)}" for s, c in self.cuts.items()
                if c.cut or c.dropped]  # fmt: skip


def tokenize(
    text: TextData,
    tokenizer: PreTrainedTokenizerBase,
    cfg: DataConfig,
    kind: str,
    splits: Sequence[str] | None = None,
) -> TaskData:
    """The tokenized splits (all, or those named); validation and test hold at most
    `cfg.eval_samples` examples (for lm: blocks of `seq_len` tokens, not documents)."""
    data, task, labels, seq_len = text.splits, text.task, text.labels, cfg.seq_len
    if task == "chat" and kind == ENCODER_DECODER:
        raise EdgetuneError(
            "chat data needs a decoder-only model with a chat template, not an encoder-decoder; "
            "give single-turn text/target rows with --task summarize"
        )
    out, cuts = {}, {}
    for split, ds in data.items():
        if splits is not None and split not in splits:
            continue
        if task == "lm":  # documents read and tokenized a slice at a time
            examples = _lm_blocks(ds, tokenizer, seq_len)
        elif task == "classify":
            rows = list(ds)
            index = {name: i for i, name in enumerate(labels)}
            texts = [r["text"] for r in rows]
            if cfg.label_words is None:
                ids = tokenizer(texts, truncation=True, max_length=seq_len)["input_ids"]
            else:
                ids = _in_prompt(texts, tokenizer, cfg, kind)
            examples = [
                {"input_ids": i, "labels": index[r["label"]]}
                for i, r in zip(ids, rows, strict=True)
            ]
        elif kind == ENCODER_DECODER:
            examples = [_seq2seq(r, tokenizer, seq_len, cfg.target_tokens) for r in ds]
        else:
            cuts[split] = Cuts()
            made = (
                chat.example(r["messages"], tokenizer, seq_len, cfg.target_len, cuts[split])
                if task == "chat"
                else _prompted(r, tokenizer, seq_len, cfg.target_tokens, cuts[split])
                for r in ds
            )
            examples = [e for e in made if e is not None]
        if split != "train" and cfg.eval_samples:
            examples = examples[: cfg.eval_samples]
        if not examples:
            if split in cuts and cuts[split].dropped:
                raise EdgetuneError(
                    f"no {split} example fits data.seq_len {seq_len} ({cuts[split].dropped} "
                    "dropped: no answer fits, or none is there); raise --seq-len, or set "
                    "data.target_len to cut answers"
                )
            raise EdgetuneError(f"the {split} split is empty after tokenization")
        out[split] = [_compact(e) for e in examples]
    words = None
    if task == "classify" and cfg.label_words is not None:
        words = label_word_ids(labels, cfg, tokenizer, kind)
    # the text rows stay only where evaluation generates from them
    raw = data if task in ("summarize", "chat") else {}
    return TaskData(task, out, labels, raw, cuts, words)


def _prompt_ends(cfg: DataConfig, tokenizer, kind: str) -> tuple[str, str]:
    """(text before the input text, text after it) of `cfg.prompt`: for a masked LM {mask} is
    its mask token, for a causal LM the prompt ends before {mask} (the word comes next)."""
    head, rest = cfg.prompt.split("{text}")
    before, after = rest.split("{mask}")
    if kind == ENCODER:
        if tokenizer.mask_token is None:
            raise EdgetuneError("label words on an encoder need a tokenizer with a mask token")
        return head, before + tokenizer.mask_token + after
    if kind != DECODER:
        raise EdgetuneError("data.label_words needs a causal or masked LM, not an "
                            "encoder-decoder")  # fmt: skip
    return head, before.rstrip(" ")


def _in_prompt(texts: list[str], tokenizer, cfg: DataConfig, kind: str) -> list[list[int]]:
    """Each text inside the prompt, the text cut so the prompt's end fits in seq_len."""
    head, tail = _prompt_ends(cfg, tokenizer, kind)
    tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    # the tokenizer's own special tokens around a text ([CLS] ... [SEP] for BERT, none or BOS
    # for a causal LM), read off one tokenized word
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    at = next(i for i in range(len(full)) if full[i : i + len(bare)] == bare)
    first, last = full[:at], full[at + len(bare) :]
    budget = cfg.seq_len - len(tail_ids) - len(first) - len(last)
    if budget < 1:
        raise EdgetuneError(f"data.prompt leaves no room for the text in {cfg.seq_len} tokens")
    bodies = tokenizer([head + t for t in texts], add_special_tokens=False)["input_ids"]
    return [first + b[:budget] + tail_ids + last for b in bodies]


def label_word_ids(labels: list[str], cfg: DataConfig, tokenizer, kind: str) -> list[int]:
    """The first token of each class's label word (`cfg.label_words`, in class order); a causal
    LM's word follows the prompt's space before {mask}, so it is tokenized with it."""
    words = cfg.label_words or {}
    missing = [name for name in labels if name not in words]
    if missing:
        raise EdgetuneError(f"data.label_words has no word for class(es) {', '.join(missing)}")
    _prompt_ends(cfg, tokenizer, kind)  # refuses a model that cannot score words
    before = cfg.prompt.split("{mask}")[0]
    space = " " if kind == DECODER and before.endswith(" ") else ""
    ids = [tokenizer(space + words[n], add_special_tokens=False)["input_ids"][0] for n in labels]
    if len(set(ids)) < len(ids):
        raise EdgetuneError("data.label_words: two words begin with the same token; choose "
                            "words that differ in their first token")  # fmt: skip
    return ids


def _compact(example: dict) -> Example:
    """Token lists as int32 arrays (arrays as they are); class ids stay ints."""
    return {
        k: np.asarray(v, dtype=np.int32) if isinstance(v, list) else v for k, v in example.items()
    }


def _lm_blocks(ds, tokenizer, seq_len: int, slice_rows: int = 512) -> list[dict]:
    """Every document ended by EOS, concatenated into one int32 stream and cut into blocks of
    `seq_len` (views of the stream). Documents are tokenized `slice_rows` at a time, so the
    Python lists of a tokenizer's output never hold more than a slice."""
    eos = tokenizer.eos_token_id
    end = [eos] if eos is not None else []
    parts = []
    for start in range(0, len(ds), slice_rows):
        texts = ds[start : start + slice_rows]["text"]
        for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
            parts.append(np.asarray(ids + end, dtype=np.int32))
    stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    n = len(stream) // seq_len
    return [{"input_ids": stream[i * seq_len : (i + 1) * seq_len]} for i in range(n)]


def prompt_ids(row: dict, task: str, tokenizer, budget: int) -> list[int]:
    """The prompt tokens a decoder-only model conditions on, cut to `budget` (summarize: the
    source's end; chat: user content, the template's tokens kept)."""
    if task == "chat":
        return chat.prompt_ids(tokenizer, row["messages"], budget)
    cue = tokenizer(SUMMARY_PROMPT, add_special_tokens=False)["input_ids"]
    source = tokenizer(row["text"], add_special_tokens=False)["input_ids"]
    return source[: max(1, budget - len(cue))] + cue


def target_text(row: dict, task: str) -> str:
    """The reference answer of a row, that generations are scored against."""
    return chat.answer_of(row["messages"]) if task == "chat" else row["target"]


def _prompted(row: dict, tokenizer, seq_len: int, target_len: int, cuts: Cuts) -> dict:
    """A decoder-only summarize example: source (its end cut to fit), cue, target (cut to
    `target_len`) and EOS."""
    full = tokenizer(" " + row["target"], add_special_tokens=False)["input_ids"]
    target = full[:target_len] + [tokenizer.eos_token_id]
    prompt = prompt_ids(row, "summarize", tokenizer, seq_len - len(target))
    cue = len(tokenizer(SUMMARY_PROMPT, add_special_tokens=False)["input_ids"])
    source = len(tokenizer(row["text"], add_special_tokens=False)["input_ids"])
    lost_source, lost_target = source - (len(prompt) - cue), len(full) - (len(target) - 1)
    cuts.examples += 1
    if lost_source or lost_target:
        cuts.cut += 1
        cuts.tokens += lost_source + lost_target
        cuts.answer_tokens += lost_target
    return {"input_ids": prompt + target, "labels": [IGNORE] * len(prompt) + target}


def _seq2seq(row: dict, tokenizer, seq_len: int, target_len: int) -> dict:
    source = tokenizer("summarize: " + row["text"], truncation=True, max_length=seq_len)
    target = tokenizer(row["target"], truncation=True, max_length=target_len)
    return {"input_ids": source["input_ids"], "labels": target["input_ids"]}


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; LM labels are the inputs (the model shifts them) with pads ignored."""
    seqs = [cast(np.ndarray, e["input_ids"]) for e in examples]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s)
        mask[i, : len(s)] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    first = examples[0].get("labels")
    if isinstance(first, int):
        batch["labels"] = torch.tensor([e["labels"] for e in examples])
    elif first is None:
        batch["labels"] = ids.masked_fill(mask == 0, IGNORE)
    else:
        targets = [cast(np.ndarray, e["labels"]) for e in examples]
        lab_width = max(len(t) for t in targets)
        labels = torch.full((len(examples), lab_width), IGNORE, dtype=torch.long)
        for i, t in enumerate(targets):
            labels[i, : len(t)] = torch.as_tensor(t)
        batch["labels"] = labels
    return batch


def batches(
    examples: Sequence[Example], batch_size: int, pad_id: int, order: Sequence[int] | None = None
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches in `order` (default: as stored); the last partial batch is kept."""
    idx = list(order) if order is not None else list(range(len(examples)))
    for start in range(0, len(idx), batch_size):
        yield collate([examples[i] for i in idx[start : start + batch_size]], pad_id)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled order of epoch `epoch`: a pure function of (seed, epoch), so resume can
    rebuild it."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()
