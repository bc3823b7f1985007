"""`edgetune generate`: one answer of a trained model to a prompt, streamed to stdout as it
comes; the speed on stderr. The sampling options here are `edgetune chat`'s too."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from edgetune.commands import err
from edgetune.errors import EdgetuneError

Opt = typer.Option

# the model and sampling options, shared with `edgetune chat`
Model = Annotated[
    str,
    typer.Argument(help="A run folder (merged model or adapter), adapter folder, model folder, "
                        ".gguf file, registry name or hub id."),
]  # fmt: skip
System = Annotated[str | None, Opt(help="System prompt (through the chat template).")]
MaxNewTokens = Annotated[int, Opt(help="Most tokens to generate per answer.")]
Temperature = Annotated[float, Opt(help="Sampling temperature; 0: greedy (the likeliest).")]
TopP = Annotated[float, Opt(help="Draw from the likeliest tokens whose probability reaches P.")]
TopK = Annotated[int, Opt(help="Draw from the K likeliest tokens; 0: no cut.")]
Seed = Annotated[int, Opt(help="Seed of the draws: the same seed, the same text.")]
Weights = Annotated[
    str | None,
    Opt(help="Hold the frozen base in fp32, bf16, fp16, q8_0, q4_0, q4_1, int8 or gguf "
             "(default: as the run did; fp32 otherwise)."),
]  # fmt: skip
Threads = Annotated[int | None, Opt(help="CPU threads torch computes with (default: torch's).")]


def generate(
    model: Model,
    prompt: Annotated[str, Opt("--prompt", "-p", help="The prompt; '-' reads it from stdin.")],
    system: System = None,
    raw: Annotated[
        bool, Opt(help="Continue the prompt as plain text, without the chat template.")
    ] = False,
    max_new_tokens: MaxNewTokens = 256,
    temperature: Temperature = 0.7,
    top_p: TopP = 0.9,
    top_k: TopK = 50,
    seed: Seed = 0,
    weights: Weights = None,
    threads: Threads = None,
) -> None:
    """Generate text from a model: its answer to --prompt, streamed as it comes.

    The prompt goes through the tokenizer's chat template (with --system) where the tokenizer
    has one, as a user turn the model answers; --raw continues the text as it is. The answer
    goes to stdout, its speed (tokens/s) to stderr.

    Examples:

        edgetune generate runs/chat --prompt "Write a subject line: the meeting moves to 3pm"

        edgetune generate smollm2-135m -p "What is the capital of France?" --temperature 0

        edgetune generate runs/chat/adapter -p "Hello" --max-new-tokens 64 --seed 7

        edgetune generate model.Q4_1.gguf -p "Once upon a time" --raw --weights gguf

        echo "Summarize: ..." | edgetune generate runs/chat --prompt -
    """
    from edgetune.generation import (
        Sampling,
        check_room,
        context_length,
        has_template,
        stream,
        templated,
    )

    sampling = Sampling(max_new_tokens, temperature, top_p, top_k, seed)
    text = sys.stdin.read() if prompt == "-" else prompt
    if not text.strip():
        raise EdgetuneError("the prompt is empty: give some text with --prompt")
    loaded = load(model, weights, threads)
    tokenizer = loaded.tokenizer
    if raw or not has_template(tokenizer):
        if system:
            why = "--raw skips it" if raw else "this model's tokenizer has none"
            raise EdgetuneError(f"--system needs the chat template ({why})")
        ids = tokenizer(text)["input_ids"]
    else:
        system_turn = [{"role": "system", "content": system}] if system else []
        ids = templated(tokenizer, [*system_turn, {"role": "user", "content": text}])
    check_room(len(ids), sampling.max_new_tokens, context_length(loaded.model))
    import torch

    torch.manual_seed(sampling.seed)
    reply = stream(loaded.model, tokenizer, ids, sampling, write)
    write("\n")
    err.print(reply.line(), highlight=False)


def write(text: str) -> None:
    """Text as the model wrote it (no markup), on stdout at once."""
    sys.stdout.write(text)
    sys.stdout.flush()


def load(model: str, weights: str | None, threads: int | None):
    """The model to generate with (`edgetune chat` too), on the machine's accelerator where it
    has one."""
    import torch

    from edgetune.pipeline import quiet_libraries
    from edgetune.placement import resolve_device
    from edgetune.trained import load_trained

    if threads is not None:
        if threads < 1:
            raise EdgetuneError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    quiet_libraries()
    loaded = load_trained(model, "lm", weights)
    device = resolve_device("auto")
    if device.type != "cpu":
        loaded.model.to(device)
    return loaded
