"""Run configs: YAML files, `section.key=value` overrides read as each key's type, the
method's options read when the config loads, validation, immutability."""

import dataclasses
import re
from pathlib import Path

import pytest

from edgetune.config import RunConfig, load_config
from edgetune.errors import EdgetuneError
from edgetune.methods.options import LoraOptions, MezoOptions, SparseOptions
from edgetune.scheme import UpdateScheme


def test_defaults_then_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train: {lr: 0.001, batch_size: 8, method: mezo}\ndata: {name: brown}\n")
    cfg = load_config(path, ["train.batch_size=4", "method.eps=1e-3", "out=runs/x"])
    assert cfg.train.lr == 0.001
    assert cfg.train.batch_size == 4
    assert cfg.data.name == "brown"
    assert cfg.data.seq_len == 128  # default kept
    assert cfg.method == MezoOptions(eps=1e-3)
    assert cfg.out == "runs/x"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.batchsize=4"], "unknown key"),
        (["train.batch_size=0"], "batch_size must be >= 1"),
        (["train.lr=-1"], "lr must be positive"),
        (["train.log_every=-1"], "log_every must be 0 or more"),
        (["nonsense"], "section.key=value"),
        (["optim.lr=1"], "unknown config section"),
        (["train.batch_size=four"], "train.batch_size must be a number"),
        (["train.batch_size=2.5"], "whole number"),
        (["train.eval_before=maybe"], "true or false"),
        (["train.budget=0"], "memory size must be positive"),
        (["train.budget=lots"], "cannot read 'lots' as a memory size"),
        (["train.device=rpi9"], "unknown device"),
        (["data.task=translate"], "unknown task"),
        (["train.schedule=zigzag"], "unknown schedule"),
        (["train.method=telepathy"], "unknown method"),
        (["train.method=lora", "method.rank=4"], r"unknown lora option\(s\) rank"),
        (["train.method=sparse", "method.scheme=last-two"], "unknown scheme 'last-two'"),
        (["train.method=sparse", "method.scheme=missing.yaml"], "scheme file not found"),
        (["train.method=pepita", "method.layers=some"], "use all, last-K or head"),
    ],
)
def test_bad_values_are_named_before_anything_loads(overrides, message):
    with pytest.raises(EdgetuneError, match=message):
        load_config(None, overrides)


def test_values_are_read_as_their_key_s_type():
    """A text setting stays text (`--out 2024` is the folder 2024, not 2024.0), numbers are
    numbers wherever they come from, null clears an optional setting."""
    cfg = load_config(None, ["out=2024", "data.name=2024", "train.lr=1e-3", "train.epochs=2",
                             "train.max_grad_norm=null", "train.threads=2"])  # fmt: skip
    assert cfg.out == "2024" and cfg.data.name == "2024"
    assert cfg.train.lr == 1e-3 and cfg.train.epochs == 2.0 and cfg.train.threads == 2
    assert cfg.train.max_grad_norm is None
    typed = load_config(None, {"out": 2024, "train.lr": "1e-3", "data.seq_len": 64.0})
    assert typed.out == "2024" and typed.train.lr == 1e-3 and typed.data.seq_len == 64
    quoted = load_config(None, ['data.name="007"', "train.method=lora",
                                "method.target_modules=[qkv, ffn1]"])  # fmt: skip
    assert quoted.data.name == "007"
    assert quoted.method.target_modules == ("qkv", "ffn1")


def test_method_options_are_their_class_and_round_trip(tmp_path):
    scheme_file = tmp_path / "s.yaml"
    UpdateScheme.last_k(4, 1).save(scheme_file)
    cfg = load_config(None, ["train.method=sparse", f"method.scheme={scheme_file}"])
    assert isinstance(cfg.method, SparseOptions)
    # a scheme file is read when the config loads: the run's config holds the scheme itself
    assert cfg.method.scheme == UpdateScheme.last_k(4, 1)
    again = RunConfig.from_dict(__import__("yaml").safe_load(cfg.to_yaml()))
    assert again == cfg
    lora = load_config(None, {"train.method": "lora"})
    assert lora.method == LoraOptions()


def test_a_config_is_never_changed_in_place():
    cfg = load_config(None, ["train.method=sparse", "method.scheme=last-2"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.out = "elsewhere"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.method.scheme = "last-1"  # type: ignore[misc]
    other = cfg.with_changes({"train.lr": 1e-3, "method.scheme": "last-1"})
    assert (cfg.train.lr, cfg.method.scheme) == (5e-5, "last-2")
    assert (other.train.lr, other.method.scheme) == (1e-3, "last-1")
    assert cfg.differences(other) == {"method.scheme": ("last-2", "last-1"),
                                      "train.lr": (5e-5, 1e-3)}  # fmt: skip
    # another method starts from its own defaults
    assert cfg.with_changes({"train.method": "lora"}).method == LoraOptions()


def test_missing_and_garbled_files(tmp_path):
    with pytest.raises(EdgetuneError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(EdgetuneError, match="not valid YAML"):
        load_config(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(EdgetuneError, match="must hold a mapping"):
        load_config(listing)


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)  # fmt: skip
def test_every_shipped_config_names_its_command_and_loads(path, tmp_path, monkeypatch):
    """Each config starts with the command that runs it, and reads as a run config (a scheme
    file it names is the plan its first command writes)."""
    import yaml

    text = path.read_text()
    assert re.search(r"^#\s+edgetune \w+ .*--config configs/", text, re.M), path.name
    scheme = (yaml.safe_load(text).get("method") or {}).get("scheme")
    monkeypatch.chdir(tmp_path)
    if isinstance(scheme, str) and scheme.endswith(".yaml"):
        UpdateScheme.last_k(2, 1).save(tmp_path / scheme)
    cfg = load_config(path)
    assert cfg.out and cfg.train.method
