r"""ONNX export checked in ONNX Runtime on the real models, through what
`edgetune export RUN --format onnx --check` runs (`edgetune.export`: `open_model`, `held_out`,
the `onnx` format's writer and check).

- classifier: a MiniLM fine-tuned on Reuters-R8 (a run folder), exported and run on the WHOLE
  R8 test split (2,189 stories, cut to the run's seq_len): labels equal to PyTorch's, max abs
  logit difference;
- decoder: a SmolLM2-135M run folder (a LoRA run: its adapter merged into the base; else the
  bundled base weights), exported with its KV cache and run on its data set's test split (the
  run's chat template and seq_len; `instructions` for the base) until at least 1,000
  next-token positions: top-1 agreement and perplexity against PyTorch fp32, each text's first
  half as one prompt and the rest a token at a time.

Writes benchmarks/results/export_onnx.{json,md}. Times are not measured (accuracy only).

    edgetune finetune --config configs/demo.yaml --max-steps 30 --out runs/r8-short \
        train.threads=1 train.eval_before=false
    edgetune finetune --model smollm2-135m --data instructions --method lora --seq-len 128 \
        --batch-size 4 --max-steps 30 --lr 1e-3 --out runs/smol-lora train.threads=1 \
        train.final_eval=false
    python benchmarks/export_onnx.py --classifier runs/r8-short --decoder runs/smol-lora
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from edgetune.bench.tables import write_json_md
from edgetune.export import export
from edgetune.export.source import RunModel, held_out, open_model

RESULTS = Path(__file__).parent / "results"
DECODER_POSITIONS = 1000  # at least this many next-token positions


def _describe(model: RunModel, where: str) -> dict:
    cfg = model.cfg
    if cfg is None:
        return {"model": f"{where} (base weights)"}
    t = cfg.train
    length = f"{t.max_steps} steps" if t.max_steps else f"{t.epochs:g} epochs"
    return {"model": f"{cfg.model.name} {cfg.spec.label(cfg.method)} ({where}, {length}, "
            f"batch {t.batch_size})"}  # fmt: skip


def classifier(run: Path, out: Path) -> dict:
    model = open_model(str(run))
    assert model.cfg is not None
    texts = held_out(model, 1)  # a classifier: every text of the test split
    done = export(model, "onnx", out, None, texts)
    return {**_describe(model, str(run)), "data": f"{model.cfg.data.name} test",
            "seq_len": model.cfg.data.seq_len, **done.figures,
            "failures": done.failures, "onnx_mb": _mb(done.files)}  # fmt: skip


def decoder(run: Path | None, out: Path) -> dict:
    where = str(run) if run else "smollm2-135m"
    model = open_model(where)
    sequences = held_out(model, DECODER_POSITIONS, None if run else "instructions")
    data = model.cfg.data if model.cfg is not None else None
    done = export(model, "onnx", out, None, sequences)
    return {**_describe(model, where),
            "data": f"{data.name if data else 'instructions'} test, {len(sequences)} texts",
            "max_len": max(len(s) for s in sequences), **done.figures,
            "failures": done.failures, "onnx_mb": _mb(done.files)}  # fmt: skip


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
            f"Decoder: {d['model']} on {d['data']} (the longest {d['max_len']} tokens), "
            f"model.onnx {d['onnx_mb']:.1f} MB, read through the KV cache\n",
            "| positions | top-1 agreement | perplexity PyTorch | perplexity ONNX Runtime "
            "| relative change | max abs logit difference |",
            "|---|---|---|---|---|---|",
            f"| {d['positions']:.0f} | {d['agreement']:.2%} | "
            f"{d['ppl_reference']:.4f} | {d['ppl_runtime']:.4f} | "
            f"{d['ppl_change']:+.2e} | {d['max_logit_diff']:.2e} |\n",
        ]
    failed = [f"- {part}: {line}" for part in ("classifier", "decoder")
              for line in result.get(part, {}).get("failures", [])]  # fmt: skip
    if failed:
        lines += ["Checks failed:\n", *failed, ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classifier", type=Path, help="a MiniLM run folder on reuters-r8")
    parser.add_argument(
        "--decoder",
        type=Path,
        help="a SmolLM2 run folder, LoRA or full (default: the bundled base)",
    )
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
