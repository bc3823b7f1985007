"""Text from a trained model, streamed as it comes: the prompt through the tokenizer's own
chat template, the sampling settings, and how fast each answer came.

    loaded = load_trained("runs/chat")                         # edgetune.trained
    chat = Conversation(loaded.tokenizer, system="Be brief.")
    ids = chat.ask("What is LoRA?", room=256, limit=context_length(loaded.model))
    reply = stream(loaded.model, loaded.tokenizer, ids, Sampling(temperature=0), sys.stdout.write)
    chat.answer(reply.text)                                   # kept for the next turn

`edgetune generate` and `edgetune chat` are these pieces. Greedy decoding (temperature 0) is
`model.generate`'s own greedy search, token for token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import TextStreamer

from edgetune.errors import EdgetuneError


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: greedily (temperature 0), else drawn from the
    temperature-scaled distribution cut to its `top_k` most likely tokens and to the smallest
    set of them whose probability reaches `top_p`."""

    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50  # 0: no cut
    seed: int = 0  # the draws of one process: the same seed, the same text

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise EdgetuneError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise EdgetuneError(f"--temperature must be 0 (greedy) or more, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise EdgetuneError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise EdgetuneError(f"--top-k must be 0 (no cut) or more, got {self.top_k}")

    def settings(self) -> dict[str, Any]:
        """`model.generate`'s keyword arguments for this choice (a model's own sampling
        defaults in its generation_config are overridden, not mixed in)."""
        if self.temperature == 0:
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p,
                "top_k": self.top_k or None}  # fmt: skip


@dataclass(frozen=True)
class Reply:
    """One answer: its text and how fast it came (prefill included in `seconds`)."""

    text: str
    prompt_tokens: int
    new_tokens: int
    seconds: float
    first_token_s: float  # from the call to the first new token: the prompt's prefill

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (f"{self.new_tokens} tokens in {self.seconds:.2f} s: {self.tokens_per_s:.1f} "
                f"tokens/s (prompt {self.prompt_tokens} tokens, first token after "
                f"{self.first_token_s:.2f} s)")  # fmt: skip


def has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def templated(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """The prompt tokens of a conversation through the tokenizer's chat template, ending where
    the assistant's answer starts: the same text the training data is tokenized from."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def context_length(model: nn.Module) -> int | None:
    """The positions the model has (None where its config does not say)."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions"):
        if isinstance(value := getattr(config, key, None), int):
            return value
    return None


def check_room(prompt: int, room: int, limit: int | None) -> None:
    if limit is not None and prompt + room > limit:
        raise EdgetuneError(
            f"the prompt is {prompt} tokens and --max-new-tokens {room} more: longer than the "
            f"model's {limit} positions; shorten the prompt or lower --max-new-tokens"
        )


@dataclass
class Conversation:
    """A chat's messages (an optional system prompt, then user and assistant turns)."""

    tokenizer: Any
    system: str | None = None
    turns: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not has_template(self.tokenizer):
            raise EdgetuneError("this model's tokenizer has no chat template; use `edgetune "
                                "generate --raw` to continue plain text")  # fmt: skip

    @property
    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def ask(self, text: str, room: int, limit: int | None) -> list[int]:
        """The prompt tokens of the conversation with the user's `text` added; the oldest
        exchanges are dropped while the prompt and `room` new tokens exceed `limit`."""
        self.turns.append({"role": "user", "content": text})
        ids = templated(self.tokenizer, self.messages)
        while limit is not None and len(ids) + room > limit and len(self.turns) > 1:
            del self.turns[:2]  # the oldest user turn and its answer
            ids = templated(self.tokenizer, self.messages)
        try:
            check_room(len(ids), room, limit)
        except EdgetuneError:
            self.turns.pop()
            raise
        return ids

    def answer(self, text: str) -> None:
        self.turns.append({"role": "assistant", "content": text})

    def reset(self) -> None:
        self.turns.clear()


class _Streamer(TextStreamer):
    """Hands each piece of finished text to `write` (whole words: the streamer holds back
    what a later token may still change) and notes when the first new token came."""

    def __init__(self, tokenizer, write: Callable[[str], object]) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.write = write
        self.first: float | None = None

    def put(self, value) -> None:
        if not self.next_tokens_are_prompt and self.first is None:
            self.first = time.perf_counter()
        super().put(value)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.write(text)


def stop_ids(model: nn.Module, tokenizer) -> list[int]:
    """The tokens that end an answer: the model's generation config's and the tokenizer's
    end-of-sequence tokens (a chat template's end-of-turn token is the latter)."""
    found = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(found if isinstance(found, list) else [] if found is None else [found])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def stream(
    model: nn.Module,
    tokenizer,
    ids: list[int],
    sampling: Sampling,
    write: Callable[[str], object],
) -> Reply:
    """Generate an answer to the prompt tokens `ids`, handing its text to `write` as it
    comes; the whole answer and its speed."""
    if not ids:
        raise EdgetuneError("the prompt is empty: give some text")
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)  # (1, prompt)
    streamer = _Streamer(tokenizer, write)
    model.eval()
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(  # type: ignore[operator]  # a transformers (or PEFT) model
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=sampling.max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=stop_ids(model, tokenizer),
            streamer=streamer,
            **sampling.settings(),
        )
    seconds = time.perf_counter() - start
    encoder_decoder = getattr(getattr(model, "config", None), "is_encoder_decoder", False)
    new = out[0, 1:] if encoder_decoder else out[0, len(ids) :]  # (new,) past the start token
    return Reply(
        text=tokenizer.decode(new, skip_special_tokens=True),
        prompt_tokens=len(ids),
        new_tokens=int(new.numel()),
        seconds=seconds,
        first_token_s=(streamer.first or time.perf_counter()) - start,
    )
