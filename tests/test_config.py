"""Run configs: YAML files, dotted overrides, validation."""

import pytest

from edgetune.config import load_config
from edgetune.errors import EdgetuneError


def test_defaults_then_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train: {lr: 0.001, batch_size: 8}\ndata: {name: brown}\n")
    cfg = load_config(path, ["train.batch_size=4", "method.eps=1e-3", "out=runs/x"])
    assert cfg.train.lr == 0.001
    assert cfg.train.batch_size == 4
    assert cfg.data.name == "brown"
    assert cfg.data.seq_len == 128  # default kept
    assert cfg.method == {"eps": 1e-3}
    assert cfg.out == "runs/x"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.batchsize=4"], "unknown key"),
        (["train.batch_size=0"], "batch_size must be >= 1"),
        (["train.lr=-1"], "lr must be positive"),
        (["nonsense"], "section.key=value"),
        (["optim.lr=1"], "unknown config section"),
    ],
)
def test_bad_values_are_named(overrides, message):
    with pytest.raises(EdgetuneError, match=message):
        load_config(None, overrides)


def test_missing_and_garbled_files(tmp_path):
    with pytest.raises(EdgetuneError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(EdgetuneError, match="not valid YAML"):
        load_config(bad)
