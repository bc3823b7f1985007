"""Exports of a fine-tuned model, checked in the device runtimes: one row per
(model, format, quant).

GGUF: SmolLM2-135M fine-tuned with LoRA on `instructions` (40 steps, batch 4 x 128; or the run
given with --run), written at f16, q8_0 and the source file's own types (Q4_1, a Q8_0
embedding). Per file, over the run's test split (at least 1,000 next-token positions):

- size, and its ratio to the run's fp32 model folder;
- the quantization's own error: PyTorch on the file's weights (dequantized) against the fp32
  model, top-1 agreement and perplexity;
- where llama-cpp-python is installed (`make export-setup`): llama.cpp against PyTorch on the
  same weights, top-1 agreement and both perplexities (`edgetune export --check`'s figures);
- its perplexity against the f16 file's (`ppl_vs_f16`; in llama.cpp where it ran).

Rows of other formats in benchmarks/results/export.json are kept; this script replaces its own.
Writes benchmarks/results/export.{json,md}.

    python benchmarks/export.py                     # trains the run first (about 30 min here)
    python benchmarks/export.py --run runs/lora-x   # an existing SmolLM2 LoRA run
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
RUN = {"model.name": "smollm2-135m", "data.name": "instructions", "data.seq_len": 128,
       "train.method": "lora", "train.batch_size": 4, "train.lr": 1e-3, "train.max_steps": 40,
       "train.final_eval": False}  # fmt: skip
MODEL = "smollm2-135m LoRA (instructions)"
COLUMNS = ("model", "format", "quant", "file_mb", "size_vs_fp32", "positions", "runtime",
           "agreement", "ppl_pytorch", "ppl_runtime", "ppl_change", "ppl_fp32",
           "quantization_agreement", "quantization_ppl_change", "ppl_vs_f16")  # fmt: skip


def train(out: Path) -> Path:
    from edgetune.config import load_config
    from edgetune.train import finetune

    finetune(load_config(None, {**RUN, "out": str(out)}))
    return out


def gguf_rows(run: Path, positions: int) -> list[dict]:
    from edgetune.export import export
    from edgetune.export.gguf import file_figures
    from edgetune.export.source import held_out, open_model

    model = open_model(str(run))
    sequences = held_out(model, positions)
    fp32_mb = sum(f.stat().st_size for f in (run / "model").iterdir()) / 2**20
    has_llama = importlib.util.find_spec("llama_cpp") is not None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for quant in ("f16", "q8_0", "source"):
            if has_llama:
                result = export(model, "gguf", Path(tmp), quant, sequences)
                figures = result.figures
            else:
                result = export(model, "gguf", Path(tmp), quant)
                figures = file_figures(model, result.files[0], sequences)
            label = result.files[0].stem.rsplit("-", 1)[1]
            rows.append({
                "model": MODEL, "format": "gguf", "quant": label,
                "file_mb": figures["file_mb"], "size_vs_fp32": figures["file_mb"] / fp32_mb,
                "positions": sum(len(s) - 1 for s in sequences),
                "runtime": "llama.cpp" if has_llama else "not installed",
                "agreement": figures.get("agreement"),
                "ppl_pytorch": figures.get("ppl_reference", figures["ppl_file_weights"]),
                "ppl_runtime": figures.get("ppl_runtime"),
                "ppl_change": figures.get("ppl_change"),
                "ppl_fp32": figures["ppl_fp32"],
                "quantization_agreement": figures["quantization_agreement"],
                "quantization_ppl_change": figures["quantization_ppl_change"],
            })  # fmt: skip
    ppl = "ppl_runtime" if has_llama else "ppl_pytorch"
    for row in rows:
        row["ppl_vs_f16"] = row[ppl] / rows[0][ppl] - 1
    return rows


def table(rows: list[dict]) -> str:
    def cell(v) -> str:
        if v is None:
            return "-"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="an existing SmolLM2 LoRA run folder")
    parser.add_argument("--positions", type=int, default=1024)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or train(Path(tmp) / "run")
        rows = gguf_rows(run, args.positions)
    path = RESULTS / "export.json"
    kept = (
        [r for r in json.loads(path.read_text()) if r["format"] != "gguf"] if path.exists() else []
    )
    rows = kept + rows
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(rows, indent=1) + "\n")
    (RESULTS / "export.md").write_text(table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
