"""Run configuration: dataclasses filled from a YAML file plus dotted `key=value` overrides.

model:  {name: minilm-l6, random_init: false}
data:   {name: reuters-r8, seq_len: 128, ...}
train:  {method: backprop, batch_size: 16, lr: 1e-4, epochs: 1, ...}
method: {}        # the method's own options (see docs/methods/<name>.md)
out: runs/demo
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgetune.errors import EdgetuneError


@dataclass
class ModelConfig:
    name: str = "minilm-l6"  # registry name, local folder, .gguf file or hub id
    random_init: bool = False  # build from the registry spec with random weights


@dataclass
class DataConfig:
    name: str = "reuters-r8"  # bundled data set, a file/folder (jsonl, csv, parquet) or hub id
    task: str | None = None  # classify | lm | summarize | chat (bundled sets know theirs)
    text_column: str = "text"
    label_column: str = "label"
    target_column: str = "target"
    seq_len: int = 128
    train_samples: int | None = None  # use only the first N training rows (after a fixed shuffle)
    eval_samples: int | None = None  # evaluate on the first N rows of validation and test

    def __post_init__(self) -> None:
        if self.seq_len < 8:
            raise EdgetuneError(f"data.seq_len must be at least 8, got {self.seq_len}")


@dataclass
class TrainConfig:
    method: str = "backprop"
    batch_size: int = 16
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 5e-5
    weight_decay: float = 0.01
    schedule: str = "linear"  # linear | cosine | constant, after warm-up
    warmup_ratio: float = 0.06
    max_grad_norm: float | None = 1.0
    epochs: float = 1.0
    max_steps: int | None = None  # optimizer steps; overrides epochs
    eval_every: int = 0  # steps between validation runs (and after the last); 0: none
    save_every: int = 0  # optimizer steps between checkpoints; 0: at the end only
    keep_checkpoints: int = 2
    seed: int = 0
    threads: int | None = None  # torch threads; None leaves torch's default
    eval_before: bool = False  # also evaluate the test split before training
    final_eval: bool = True  # evaluate the test split at the end (benchmarks turn it off)
    budget: str | None = None  # refuse to start if the forecast step exceeds it (e.g. 256MB)
    device: str | None = None  # device profile: its memory is the budget, latency is forecast

    def __post_init__(self) -> None:
        for key in ("batch_size", "grad_accum", "keep_checkpoints"):
            if getattr(self, key) < 1:
                raise EdgetuneError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        if self.lr <= 0:
            raise EdgetuneError(f"train.lr must be positive, got {self.lr}")
        if self.max_steps is not None and self.max_steps < 1:
            raise EdgetuneError(f"train.max_steps must be >= 1, got {self.max_steps}")
        if self.epochs <= 0:
            raise EdgetuneError(f"train.epochs must be positive, got {self.epochs}")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: dict[str, Any] = field(default_factory=dict)
    out: str = "runs/latest"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        if not isinstance(data, dict):
            raise EdgetuneError("a run config must be a mapping of sections")
        sections = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
        unknown = set(data) - {*sections, "method", "out"}
        if unknown:
            raise EdgetuneError(f"unknown config section(s): {', '.join(sorted(unknown))}")
        kwargs: dict[str, Any] = {}
        for name, kind in sections.items():
            values = data.get(name) or {}
            known = {f.name for f in dataclasses.fields(kind)}
            bad = set(values) - known
            if bad:
                raise EdgetuneError(
                    f"unknown key(s) in {name}: {', '.join(sorted(bad))}; "
                    f"known: {', '.join(sorted(known))}"
                )
            try:
                kwargs[name] = kind(**_coerce(kind, values))
            except TypeError as e:
                raise EdgetuneError(f"bad {name} config: {e}") from None
        kwargs["method"] = dict(data.get("method") or {})
        if "out" in data:
            kwargs["out"] = str(data["out"])
        return cls(**kwargs)


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """A YAML config file's top-level mapping, or one clear error."""
    if not path.is_file():
        raise EdgetuneError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise EdgetuneError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise EdgetuneError(f"config file {path} must hold a mapping")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults, then the YAML file, then `section.key=value` overrides (values parsed as YAML)."""
    data: dict[str, Any] = RunConfig().to_dict()
    if path is not None:
        _merge(data, read_yaml_mapping(Path(path)))
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise EdgetuneError(f"override {item!r} is not of the form section.key=value")
        _set_dotted(data, key.strip(), _parse_value(raw))
    return RunConfig.from_dict(data)


def _coerce(kind: type, values: dict[str, Any]) -> dict[str, Any]:
    """Numbers written as YAML 1.1 strings ("1e-4") become numbers; other types are checked."""
    types = {f.name: str(f.type) for f in dataclasses.fields(kind)}
    out = {}
    for key, value in values.items():
        want = types[key]
        if isinstance(value, str) and ("float" in want or "int" in want):
            try:
                value = int(value) if "int" in want and "float" not in want else float(value)
            except ValueError:
                raise EdgetuneError(f"{key} must be a number, got {value!r}") from None
        if want == "bool" and not isinstance(value, bool):
            raise EdgetuneError(f"{key} must be true or false, got {value!r}")
        out[key] = value
    return out


def _parse_value(raw: str) -> Any:
    """A YAML scalar, with numbers like 1e-3 (a string to YAML 1.1) read as floats."""
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError:
        return raw
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _merge(base: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def _set_dotted(data: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise EdgetuneError(f"cannot set {key}: {part} is not a section")
    node[last] = value
