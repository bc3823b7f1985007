"""`edgetune chat`: a conversation with a trained model, a line of stdin per message (typed,
or piped), each answer streamed to stdout as it comes and kept for the next turn."""

from __future__ import annotations

import sys
from collections.abc import Iterator

from edgetune.commands import err
from edgetune.commands.generate import (
    MaxNewTokens,
    Model,
    Seed,
    System,
    Temperature,
    Threads,
    TopK,
    TopP,
    Weights,
    load,
    write,
)
from edgetune.errors import EdgetuneError

COMMANDS = {"/reset": "forget the conversation (the system prompt stays)",
            "/exit": "end the chat (so does end of input, Ctrl-D)",
            "/help": "list these commands"}  # fmt: skip


def chat(
    model: Model,
    system: System = None,
    max_new_tokens: MaxNewTokens = 256,
    temperature: Temperature = 0.7,
    top_p: TopP = 0.9,
    top_k: TopK = 50,
    seed: Seed = 0,
    weights: Weights = None,
    threads: Threads = None,
) -> None:
    """Chat with a model: each line of stdin is a message, each answer streams to stdout.

    The conversation goes through the tokenizer's chat template (the model needs one), with
    --system first; the oldest turns are dropped when it outgrows the model's positions.
    /reset forgets the conversation, /exit or end of input ends it. Each answer's speed
    (tokens/s) goes to stderr.

    Examples:

        edgetune chat runs/chat

        edgetune chat smollm2-135m --system "Answer in one sentence." --temperature 0

        printf 'Hi!\\nWhat did I just say?\\n' | edgetune chat runs/chat --temperature 0

        edgetune chat runs/chat/adapter --weights q8_0 --max-new-tokens 128
    """
    import torch

    from edgetune.generation import Conversation, Sampling, context_length, stream

    sampling = Sampling(max_new_tokens, temperature, top_p, top_k, seed)
    loaded = load(model, weights, threads)
    conversation = Conversation(loaded.tokenizer, system)
    limit = context_length(loaded.model)
    interactive = sys.stdin.isatty()
    if interactive:
        err.print(f"chatting with {model}: /reset forgets, /exit ends, /help lists commands",
                  highlight=False)  # fmt: skip
    torch.manual_seed(sampling.seed)
    for text in _messages(interactive):
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            conversation.reset()
            err.print("(the conversation is forgotten)")
            continue
        if text.split()[0].startswith("/") and "/" not in text.split()[0][1:]:
            if text != "/help":
                err.print(f"unknown command {text.split()[0]}", highlight=False)
            for name, what in COMMANDS.items():
                err.print(f"  {name}  {what}", highlight=False)
            continue
        try:
            ids = conversation.ask(text, sampling.max_new_tokens, limit)
        except EdgetuneError as e:  # this message does not fit: say so, and go on
            err.print(f"[red]error:[/] {e}", highlight=False)
            continue
        reply = stream(loaded.model, loaded.tokenizer, ids, sampling, write)
        write("\n")
        conversation.answer(reply.text.strip())
        err.print(reply.line(), style="dim", highlight=False)


def _messages(interactive: bool) -> Iterator[str]:
    """The user's messages: stdin's non-empty lines (typed after a `> ` prompt), until its
    end."""
    while True:
        if interactive:
            try:
                line = input("> ")
            except EOFError:
                return
        elif not (line := sys.stdin.readline()):
            return
        if line.strip():
            yield line.strip()
