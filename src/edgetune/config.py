"""Run configuration: frozen dataclasses filled from a YAML file plus `section.key=value`
overrides, every value read as its field's type (`edgetune.fields`).

model:     {name: minilm-l6, random_init: false}
data:      {name: reuters-r8, seq_len: 128, ...}
train:     {method: backprop, batch_size: 16, lr: 5e-5, epochs: 1, ...}
method:    {}   # the method's own options, read into its options class (docs/methods/<name>.md)
federated: {}   # `edgetune federate` only (docs/federated.md)
out: runs/demo

A config is never changed in place: `RunConfig.with_changes` returns a new one. The method's
options are read when the config loads, so a typo in them fails before any model or data is
loaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgetune.errors import EdgetuneError
from edgetune.fields import Raw, build, plain, read
from edgetune.io import read_yaml
from edgetune.methods.registry import MethodSpec, get_method
from edgetune.precision import ACCELERATORS, COMPUTE_DTYPES, check_choice, check_weights
from edgetune.units import parse_bytes

TASKS = ("classify", "lm", "summarize", "chat")
STRATEGIES = ("fedavg", "fedavgm", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum")
PARTITIONS = ("iid", "dirichlet")
CODECS = ("fp32", "fp16", "int8", "topk")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "minilm-l6"  # registry name, local folder, .gguf file or hub id
    random_init: bool = False  # build from the registry spec with random weights
    weights: str = "fp32"  # format the frozen base is held in (edgetune.precision): fp32,
    # bf16, fp16, q8_0, q4_0, q4_1, int8, or gguf (a GGUF file's own blocks)
    adapter: str | None = None  # a PEFT adapter folder applied over the model (merged into an
    # fp32 base, kept beside a held one)

    def __post_init__(self) -> None:
        check_weights(self.weights)


@dataclass(frozen=True)
class DataConfig:
    name: str = "reuters-r8"  # bundled data set, a file/folder (jsonl, json, csv, parquet), hub id
    task: str | None = None  # classify | lm | summarize | chat (bundled sets know theirs)
    text_column: str = "text"
    label_column: str = "label"
    target_column: str = "target"
    seq_len: int = 128
    target_len: int | None = None  # longest target in tokens: of an encoder-decoder or a
    # decoder-only summarize row (None: seq_len / 4, >= 8); of a chat answer (None: uncut, an
    # answer that cannot fit is dropped); cuts are counted and printed at load
    train_samples: int | None = None  # use only the first N training rows (after a fixed shuffle)
    eval_samples: int | None = None  # evaluate on the first N examples of validation and test
    # (rows; for lm, blocks of seq_len tokens)
    label_words: dict[str, str] | None = None  # classify through the LM head: class -> word,
    # each class scored by its word's logit at the {mask} of `prompt` (a causal or masked LM)
    prompt: str = "{text}\nLabel: {mask}"  # with label_words: where the text and the word go

    def __post_init__(self) -> None:
        if self.seq_len < 8:
            raise EdgetuneError(f"data.seq_len must be at least 8, got {self.seq_len}")
        if self.task is not None and self.task not in TASKS:
            raise EdgetuneError(f"unknown task {self.task!r}; choose from {', '.join(TASKS)}")
        for key in ("target_len", "train_samples", "eval_samples"):
            if (value := getattr(self, key)) is not None and value < 1:
                raise EdgetuneError(f"data.{key} must be at least 1, got {value}")
        text, mask = self.prompt.find("{text}"), self.prompt.find("{mask}")
        if self.prompt.count("{text}") != 1 or self.prompt.count("{mask}") != 1 or mask < text:
            raise EdgetuneError(
                f"data.prompt {self.prompt!r} must hold {{text}} once and, after it, {{mask}} "
                "once (where the label word goes)"
            )
        if self.label_words is not None:
            if self.task not in (None, "classify"):
                raise EdgetuneError("data.label_words needs a classification task")
            if len(set(self.label_words.values())) < len(self.label_words):
                raise EdgetuneError("data.label_words gives two classes the same word")

    @property
    def target_tokens(self) -> int:
        """Target length of an encoder-decoder: what tokenization cuts to and the forecast
        costs."""
        return self.target_len or max(8, self.seq_len // 4)


@dataclass(frozen=True)
class TrainConfig:
    method: str = "backprop"  # learning rule (`edgetune methods`)
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
    log_every: int = 10  # steps between log lines when stderr is not a terminal; 0: none
    keep_checkpoints: int = 2
    seed: int = 0
    threads: int | None = None  # torch threads; None leaves torch's default
    eval_before: bool = False  # also evaluate the test split before training
    final_eval: bool = True  # evaluate the test split at the end (benchmarks turn it off)
    budget: str | None = None  # memory a step may use, weights included (e.g. 256MB): refuse
    # to start beyond it
    device: str | None = None  # device profile: its memory is the budget, latency is forecast
    dtype: str = "fp32"  # compute dtype: fp32 | bf16 | fp16 (autocast) | auto (bf16 where the
    # processor has native bf16, else fp32)
    accelerator: str = "auto"  # where the run computes: auto (cuda, else mps, else cpu) | cpu |
    # cuda | mps
    checkpointing: bool = False  # recompute each block's activations in the backward
    chunked_loss: bool = False  # a causal LM's loss a vocabulary chunk at a time (frozen head)
    lean_allocator: bool = False  # return freed buffers to the system at once (resident memory
    # tracks live tensors; steps may run slower)
    eval_batch_size: int = 32  # examples per evaluation batch
    merge: bool = True  # a method that trains adapters (lora) also saves them merged into
    # the base (model/) beside the adapter (adapter/); off: the adapter only

    def __post_init__(self) -> None:
        get_method(self.method)
        for key in ("batch_size", "grad_accum", "keep_checkpoints", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise EdgetuneError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("eval_every", "save_every", "log_every"):
            if getattr(self, key) < 0:
                raise EdgetuneError(f"train.{key} must be 0 or more, got {getattr(self, key)}")
        if self.lr <= 0:
            raise EdgetuneError(f"train.lr must be positive, got {self.lr}")
        if self.max_steps is not None and self.max_steps < 1:
            raise EdgetuneError(f"train.max_steps must be >= 1, got {self.max_steps}")
        if self.epochs <= 0:
            raise EdgetuneError(f"train.epochs must be positive, got {self.epochs}")
        if self.schedule not in ("linear", "cosine", "constant"):
            raise EdgetuneError(f"unknown schedule {self.schedule!r}; use linear, cosine or "
                                "constant")  # fmt: skip
        if self.threads is not None and self.threads < 1:
            raise EdgetuneError(f"train.threads must be >= 1, got {self.threads}")
        if self.budget is not None:
            parse_bytes(self.budget)
        if self.device is not None:
            from edgetune.cost import load_device

            load_device(self.device)
        check_choice("train.dtype", self.dtype, COMPUTE_DTYPES)
        check_choice("train.accelerator", self.accelerator, ACCELERATORS)


@dataclass(frozen=True)
class FederatedConfig:
    """The `federated:` section (`edgetune federate`, docs/federated.md)."""

    rounds: int = 3  # server rounds
    clients: int = 2  # partitions of the training set (= SuperNodes)
    local_steps: int = 10  # Method.step calls per client per round
    strategy: str = "fedavg"  # one of STRATEGIES
    partition: str = "iid"  # iid | dirichlet
    alpha: float = 0.5  # Dirichlet concentration (non-IID when small)
    compress: str = "fp32"  # fp32 | fp16 | int8 | topk (a method that sends seeds sends seeds)
    topk_fraction: float = 0.01  # entries per tensor that topk sends
    error_feedback: bool = True  # topk keeps what it did not send for the next round
    network: str = "4g"  # profile for transfer times (3g, 4g, 5g, wifi, ethernet)
    fraction_train: float = 1.0  # share of clients sampled per round
    min_clients: int = 2  # fewest replies a round waits to sample
    timeout: float = 600.0  # seconds a round waits for replies; late clients are left out
    holdout: float = 0.1  # share of each client's rows kept for its own evaluation
    max_update_ratio: float = 10.0  # reject updates with norm > ratio x the global state norm
    # or x the round's lower median update norm
    proximal_mu: float = 0.01  # FedProx
    server_lr: float = 1.0  # FedAvgM server learning rate; FedAdam eta is server_lr / 100
    server_momentum: float = 0.9  # FedAvgM
    trim_beta: float = 0.2  # FedTrimmedAvg: share cut from each end
    krum_byzantine: int = 0  # Krum: assumed malicious clients
    generate_samples: int = 16  # rows scored with ROUGE (summarize)
    device: str = "this-machine"  # device profile whose peak FLOP/s gives the MFU
    resume: bool = False  # continue from the newest round checkpoint in `out`
    crash_client: int = -1  # fault injection: this partition dies mid-round ...
    crash_round: int = 1  # ... in this round

    def __post_init__(self) -> None:
        for key in ("rounds", "clients", "local_steps", "min_clients"):
            if getattr(self, key) < 1:
                raise EdgetuneError(f"federated.{key} must be >= 1, got {getattr(self, key)}")
        for key, known in (("strategy", STRATEGIES), ("partition", PARTITIONS),
                           ("compress", CODECS)):  # fmt: skip
            if getattr(self, key) not in known:
                raise EdgetuneError(f"unknown federated.{key} {getattr(self, key)!r}; choose "
                                    f"from {', '.join(known)}")  # fmt: skip
        if not 0 < self.topk_fraction <= 1 or not 0 < self.fraction_train <= 1:
            raise EdgetuneError("federated.topk_fraction and fraction_train must be in (0, 1]")
        if not 0 < self.holdout < 1:
            raise EdgetuneError("federated.holdout must be in (0, 1): clients evaluate on it")


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig,
                             "federated": FederatedConfig}  # fmt: skip


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: Any = None  # the options object of train.method (None: its defaults)
    federated: FederatedConfig = field(default_factory=FederatedConfig)
    out: str = "runs/latest"

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", self.spec.parse(self.method))
        trains = self.spec.rule_for(self.method).trains
        if self.model.weights != "fp32" and trains in ("all", "linears"):
            raise EdgetuneError(
                f"{self.train.method} changes every weight of the model, and model.weights="
                f"{self.model.weights} holds the base frozen in a low-precision format: train "
                "it with lora or sparse, or keep model.weights=fp32 (train.dtype=bf16 computes "
                "in bf16 over fp32 weights)"
            )

    @property
    def identity(self) -> dict[str, str]:
        """What a checkpoint of this run must match: model, method and data."""
        return {"model": self.model.name, "method": self.train.method, "data": self.data.name}

    @property
    def spec(self) -> MethodSpec:
        """The registry entry of `train.method`."""
        return get_method(self.train.method)

    def to_dict(self) -> dict[str, Any]:
        out = {name: plain(getattr(self, name)) for name in (*SECTIONS, "method", "out")}
        if self.federated == FederatedConfig():  # a plain run says nothing of federation
            del out["federated"]
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """A config from a mapping of sections (values typed by YAML, Python or `Raw` text)."""
        if not isinstance(data, Mapping):
            raise EdgetuneError("a run config must be a mapping of sections")
        unknown = set(data) - {*SECTIONS, "method", "out"}
        if unknown:
            raise EdgetuneError(
                f"unknown config section(s): {', '.join(sorted(map(str, unknown)))}; known: "
                f"{', '.join([*SECTIONS, 'method', 'out'])}"
            )
        kwargs: dict[str, Any] = {
            name: build(kind, data.get(name) or {}, name) for name, kind in SECTIONS.items()
        }
        spec = get_method(kwargs["train"].method)
        kwargs["method"] = spec.parse(data.get("method") or {})
        if "out" in data:
            kwargs["out"] = read(data["out"], str, "out")
        return cls(**kwargs)

    def with_changes(self, overrides: Mapping[str, Any] | Sequence[str]) -> RunConfig:
        """A new config with `section.key` values changed (the same rules as `load_config`);
        another `train.method` without `method.*` keys starts from that method's defaults."""
        data = self.to_dict()
        before = data["train"]["method"]
        keys = _apply(data, overrides)
        if data["train"]["method"] != before and not any(k.startswith("method.") for k in keys):
            data["method"] = {}
        return RunConfig.from_dict(data)

    def differences(self, other: RunConfig) -> dict[str, tuple[Any, Any]]:
        """`section.key` -> (this value, the other's) for every setting that differs."""
        mine, theirs = _flat(self.to_dict()), _flat(other.to_dict())
        return {k: (mine.get(k), theirs.get(k)) for k in sorted({*mine, *theirs})
                if mine.get(k) != theirs.get(k)}  # fmt: skip


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """A YAML config file's top-level mapping, or one clear error."""
    data = read_yaml(path, "config file") or {}
    if not isinstance(data, dict):
        raise EdgetuneError(f"config file {path} must hold a mapping")
    return data


def load_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | Sequence[str] = ()
) -> RunConfig:
    """Defaults, then the YAML file, then the overrides: `section.key=value` texts (each value
    read as its field's type) or a mapping of `section.key` to typed values."""
    data: dict[str, Any] = read_yaml_mapping(Path(path)) if path is not None else {}
    _apply(data, overrides)
    return RunConfig.from_dict(data)


def _apply(data: dict[str, Any], overrides: Mapping[str, Any] | Sequence[str]) -> list[str]:
    """Set each `section.key` of `overrides` in the nested mapping `data`; the keys set."""
    if isinstance(overrides, Mapping):
        items = list(overrides.items())
    else:
        items = []
        for item in overrides:
            key, sep, raw = item.partition("=")
            if not sep or not key.strip():
                raise EdgetuneError(f"override {item!r} is not of the form section.key=value")
            items.append((key, Raw(raw)))
    for key, value in items:
        key = key.strip()
        if key == "out":
            data["out"] = value
            continue
        section, _, name = key.partition(".")
        known = ", ".join([*SECTIONS, "method", "out"])
        if section not in (*SECTIONS, "method"):
            raise EdgetuneError(f"unknown config section {section!r} in {key!r}; known: {known}")
        if not name or "." in name:
            raise EdgetuneError(f"cannot set {key!r}: write section.key=value ({known})")
        node = data.setdefault(section, {})
        if not isinstance(node, dict):
            raise EdgetuneError(f"cannot set {key}: {section} is not a section")
        node[name] = value
    return [key.strip() for key, _ in items]


def _flat(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and not prefix:
            out.update(_flat(value, f"{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
