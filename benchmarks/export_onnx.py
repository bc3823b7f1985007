"""ONNX export checked in ONNX Runtime on the real models (`edgetune.export.onnx`).

- classifier: a MiniLM fine-tuned on Reuters-R8 (a run folder), exported and run on the WHOLE
  R8 test split (2,189 stories, cut to the run's seq_len): labels equal to PyTorch's, max abs
  logit difference;
- decoder: SmolLM2-135M (a run folder, else the bundled base weights), exported with its KV
  cache and run on `instructions` test conversations (chat template, prompt and answer, cut to
  256 tokens) until at least 1,000 next-token positions: top-1 agreement and perplexity against
  PyTorch fp32, each text's first half as one prompt and the rest a token at a time.

Writes benchmarks/results/export_onnx.{json,md}. Times are not measured (accuracy only).

    edgetune finetune --config configs/demo.yaml --max-steps 30 --out runs/r8-short
    python benchmarks/export_onnx.py --classifier runs/r8-short [--decoder runs/smol-lora]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import yaml
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from edgetune.bench.tables import write_json_md
from edgetune.config import DataConfig
from edgetune.data.load import load_data
from edgetune.export.onnx import export
from edgetune.models.bundled import bundled_path

RESULTS = Path(__file__).parent / "results"
DECODER_POSITIONS = 1000  # at least this many next-token positions
DECODER_LEN = 256


def classifier(run: Path, out: Path) -> dict:
    seq_len = yaml.safe_load((run / "config.yaml").read_text())["data"]["seq_len"]
    model = AutoModelForSequenceClassification.from_pretrained(run / "model")
    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    texts = list(load_data(DataConfig(name="reuters-r8")).splits["test"]["text"])
    done = export(model, tokenizer, out, check_texts=texts, max_len=seq_len)
    return {"model": str(run), "data": "reuters-r8 test", "seq_len": seq_len, **done.figures,
            "onnx_mb": _mb(done.files)}  # fmt: skip


def decoder(run: Path | None, out: Path) -> dict:
    where = run / "model" if run else bundled_path("smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(where)
    tokenizer = AutoTokenizer.from_pretrained(where)
    texts, positions = [], 0
    for row in load_data(DataConfig(name="instructions")).splits["test"]:
        user = [{"role": "user", "content": row["text"]}]
        prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        texts.append(f"{prompt} {row['target']}{tokenizer.eos_token}")
        positions += min(DECODER_LEN, len(tokenizer(texts[-1])["input_ids"])) - 1
        if positions >= DECODER_POSITIONS:
            break
    done = export(model, tokenizer, out, check_texts=texts, max_len=DECODER_LEN)
    return {"model": str(run) if run else "smollm2-135m (bundled base)",
            "data": f"instructions test, {len(texts)} conversations", "max_len": DECODER_LEN,
            **done.figures, "onnx_mb": _mb(done.files)}  # fmt: skip


def _mb(files: list[Path]) -> float:
    return sum(f.stat().st_size for f in files if f.name.startswith("model.onnx")) / 2**20


def table(result: dict) -> str:
    lines = ["# ONNX export checked in ONNX Runtime\n"]
    if c := result.get("classifier"):
        lines += [
            f"Classifier: {c['model']} on {c['data']} (seq_len {c['seq_len']}), "
            f"model.onnx {c['onnx_mb']:.1f} MB\n",
            "| texts | labels equal to PyTorch | max abs logit difference |",
            "|---|---|---|",
            f"| {c['texts']:.0f} | {c['labels_equal']:.0f} / {c['texts']:.0f} "
            f"({c['label_agreement']:.2%}) | {c['max_logit_diff']:.2e} |\n",
        ]
    if d := result.get("decoder"):
        lines += [
            f"Decoder: {d['model']} on {d['data']} (cut to {d['max_len']} tokens), "
            f"model.onnx {d['onnx_mb']:.1f} MB, read through the KV cache\n",
            "| positions | top-1 agreement | perplexity PyTorch | perplexity ONNX Runtime "
            "| relative change | max abs logit difference |",
            "|---|---|---|---|---|---|",
            f"| {d['positions']:.0f} | {d['agreement']:.2%} | "
            f"{d['ppl_reference']:.4f} | {d['ppl_runtime']:.4f} | "
            f"{d['ppl_change']:+.2e} | {d['max_logit_diff']:.2e} |\n",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classifier", type=Path, help="a MiniLM run folder on reuters-r8")
    parser.add_argument("--decoder", type=Path, help="a SmolLM2 run folder (default: base)")
    parser.add_argument("--only", choices=("classifier", "decoder"))
    args = parser.parse_args()
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.only != "decoder" and args.classifier:
            result["classifier"] = classifier(args.classifier, Path(tmp) / "classifier")
        if args.only != "classifier":
            result["decoder"] = decoder(args.decoder, Path(tmp) / "decoder")
    # a part run with --only replaces its own section of an earlier result
    earlier = RESULTS / "export_onnx.json"
    if args.only and earlier.exists():
        result = {**json.loads(earlier.read_text()), **result}
    print(table(result))
    for path in write_json_md(result, RESULTS, "export_onnx", table(result)):
        print("wrote", path)


if __name__ == "__main__":
    main()
