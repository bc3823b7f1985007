"""`edgetune generate` and `edgetune chat` on a tiny fine-tuned model: greedy decoding is
`model.generate`'s, the conversation keeps its history through the chat template, and bad
input ends in one clear line."""

from __future__ import annotations

import sys

import pytest
import torch
from typer.testing import CliRunner

from edgetune.errors import EdgetuneError
from edgetune.generation import Conversation, Sampling, stream, templated
from edgetune.trained import load_trained

PROMPT = "repeat red cat sun"


@pytest.fixture(scope="module")
def loaded(chat_run):
    return load_trained(str(chat_run))


def _reference(loaded, ids, new=12):
    """`model.generate`'s own greedy answer to `ids`."""
    tok = loaded.tokenizer
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        out = loaded.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                    max_new_tokens=new, do_sample=False,
                                    pad_token_id=tok.pad_token_id)  # fmt: skip
    return tok.decode(out[0, len(ids) :], skip_special_tokens=True)


def test_greedy_generate_is_model_generate_s(chat_run, loaded):
    from edgetune.cli import app

    ids = templated(loaded.tokenizer, [{"role": "user", "content": PROMPT}])
    want = _reference(loaded, ids)
    assert want.strip(), "the reference generated nothing to compare"
    pieces: list[str] = []
    reply = stream(loaded.model, loaded.tokenizer, ids, Sampling(12, temperature=0),
                   pieces.append)  # fmt: skip
    assert reply.text == "".join(pieces) == want and reply.new_tokens == 12
    result = CliRunner().invoke(app, ["generate", str(chat_run), "-p", PROMPT, "--temperature", "0",
                                      "--max-new-tokens", "12"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == want + "\n"
    assert "tokens/s" in result.stderr
    raw = CliRunner().invoke(app, ["generate", str(chat_run), "-p", PROMPT, "--raw",
                                   "--temperature", "0", "--max-new-tokens", "12"])  # fmt: skip
    assert raw.stdout == _reference(loaded, loaded.tokenizer(PROMPT)["input_ids"]) + "\n"


def test_sampling_is_reproducible_from_its_seed(loaded):
    ids = templated(loaded.tokenizer, [{"role": "user", "content": PROMPT}])
    texts = []
    for seed in (3, 3):
        torch.manual_seed(seed)
        sampling = Sampling(16, temperature=1.0, seed=seed)
        texts.append(stream(loaded.model, loaded.tokenizer, ids, sampling, lambda _: None).text)
    assert texts[0] == texts[1]


def test_the_conversation_keeps_its_history_and_drops_the_oldest_to_fit(loaded):
    tok = loaded.tokenizer
    chat = Conversation(tok, system="Be brief.")
    assert chat.ask("hi", room=8, limit=None) == templated(
        tok, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    )
    chat.answer("hello")
    second = chat.ask("and now?", room=8, limit=None)
    whole = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
             {"role": "assistant", "content": "hello"},
             {"role": "user", "content": "and now?"}]  # fmt: skip
    assert second == templated(tok, whole)
    chat.answer("fine")
    latest = templated(tok, [whole[0], {"role": "user", "content": "last"}])
    assert chat.ask("last", room=8, limit=len(latest) + 8) == latest  # the oldest dropped
    chat.reset()
    assert chat.messages == whole[:1]
    with pytest.raises(EdgetuneError, match="longer than the model's 4 positions"):
        chat.ask("anything", room=8, limit=4)
    assert chat.messages == whole[:1]  # the refused message is not kept


def test_chat_reads_piped_stdin_and_keeps_the_history(chat_run, loaded):
    from edgetune.cli import app

    tok = loaded.tokenizer
    lines = f"{PROMPT}\n\n/help\nsecond\n/reset\n{PROMPT}\n/exit\nnever read\n"
    result = CliRunner().invoke(app, ["chat", str(chat_run), "--temperature", "0",
                                      "--max-new-tokens", "6"], input=lines)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stderr.count("tokens/s") == 3 and "/reset" in result.stderr
    first = _reference(loaded, templated(tok, [{"role": "user", "content": PROMPT}]), 6)
    history = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": first.strip()},
               {"role": "user", "content": "second"}]  # fmt: skip
    second = _reference(loaded, templated(tok, history), 6)
    # after /reset the first question gets the first answer again
    assert result.stdout == f"{first}\n{second}\n{first}\n"


def _main(monkeypatch, capsys, *args):
    from edgetune import cli

    monkeypatch.setattr(sys, "argv", ["edgetune", *args])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "Traceback" not in err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1, err
    return " ".join(err.split())


def test_bad_input_is_one_clear_line(monkeypatch, capsys, chat_run, tmp_path):
    assert "cannot load model" in _main(monkeypatch, capsys, "generate", str(tmp_path / "none"),
                                        "-p", "hi")  # fmt: skip
    assert "not an encoder (bert)" in _main(monkeypatch, capsys, "generate", "minilm-l6", "-p",
                                            "hi")  # fmt: skip
    assert "the prompt is empty" in _main(monkeypatch, capsys, "generate", str(chat_run), "-p", " ")
    assert "--temperature must be 0" in _main(monkeypatch, capsys, "chat", str(chat_run),
                                              "--temperature", "-1")  # fmt: skip
    assert "longer than the model's 128 positions" in _main(
        monkeypatch, capsys, "generate", str(chat_run), "-p", "hi", "--max-new-tokens", "500"
    )
