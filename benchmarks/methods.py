"""Every learning method on the same model, data, batch and sequence length, side by side.

Per method a fresh interpreter measures peak RSS, FLOPs per step (torch's flop counter), bytes
saved for backward (saved-tensor hooks), trainable parameters, and step time alternated with a
forward pass alone at the same batch (eval mode, no autograd: the physical floor); a fresh
inference interpreter gives the inference peak. Then one `finetune` run per method for the
same number of optimizer steps gives the test metric. Writes benchmarks/results/<name>.{json,md,png}
(shared logic: `edgetune.bench.methods`, also behind `edgetune bench methods`).

    python benchmarks/methods.py                         # MiniLM on Reuters-R8, 16 x 128
    python benchmarks/methods.py --preset smollm2        # SmolLM2-135M on brown, 4 x 128
    python benchmarks/methods.py --steps 20 --eval-samples 200 --rounds 3 --repeats 1
    python benchmarks/methods.py --lr-sweep 0.3,1,3 --only backprop,"sparse last-1"
    python benchmarks/methods.py --preset lean-minilm    # lean methods and hybrids, demo setting
    python benchmarks/methods.py --preset lean-smollm2   # top-block LoRA, ZO-LoRA, hybrids vs LoRA

`--lr-sweep` instead runs only accuracy runs, at each variant's learning rate times each factor,
picks the rate by the validation metric and reports the test metric there
(benchmarks/results/<name>-lr.{json,md}).

The `lean-*` presets put memory-lean methods beside a reference run (the demo's backprop on
MiniLM; LoRA by backprop for 30 steps on SmolLM2), each with its own number of steps, and judge
them against the reference: step peak against inference's, training wall time against the
reference's, the test metric; each hybrid against the single methods at equal or less measured
peak memory (`edgetune.bench.methods.lean_verdicts`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgetune.bench.methods import (
    LeanTargets,
    Setup,
    Variant,
    compare,
    lean_minilm_variants,
    lean_smollm_variants,
    lean_verdicts,
    minilm_variants,
    smollm_variants,
    sweep,
)
from edgetune.bench.tables import (
    lean_table,
    methods_table,
    sweep_table,
    write_json_md,
    write_outputs,
)
from edgetune.report.figures import plot_lean

RESULTS = Path(__file__).parent / "results"
SCHEMES = ["last-1", "qkv-ffn1-1", "bias-only-1", "last-2", "bias-only"]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--preset", choices=["minilm", "smollm2", "lean-minilm", "lean-smollm2"], default="minilm"
    )
    ap.add_argument("--steps", type=int, help="optimizer steps of every accuracy run")
    ap.add_argument("--eval-samples", type=int, help="test rows scored after training")
    ap.add_argument("--rounds", type=int, default=3, help="timed step/forward rounds")
    ap.add_argument("--repeats", type=int, default=1, help="fresh processes per method")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--schemes", default=",".join(SCHEMES), help="sparse schemes to try")
    ap.add_argument("--only", help="comma-separated variant labels to keep")
    ap.add_argument("--accuracy", help="labels that get a finetune run (default: all; '' none)")
    ap.add_argument("--name", help="output file stem (default: methods-<preset>)")
    ap.add_argument("--lr-sweep", help="comma-separated lr factors: choose lr on validation")
    args = ap.parse_args()

    variants: list[Variant]
    targets: LeanTargets | None = None
    if args.preset == "minilm":
        setup = Setup("minilm-l6", "reuters-r8", batch=16, seq=128, steps=100, eval_samples=500)
        variants = minilm_variants(args.schemes.split(","))
    elif args.preset == "lean-minilm":  # the demo's setting, the whole test split
        setup = Setup("minilm-l6", "reuters-r8", batch=16, seq=64, steps=600, eval_samples=2189)
        variants = lean_minilm_variants(args.steps or setup.steps)
        targets = LeanTargets(peak_over_inference=1.15, wall_over_reference=10, accuracy=88.0)
    elif args.preset == "lean-smollm2":
        setup = Setup("smollm2-135m", "brown", batch=4, seq=128, steps=150, eval_samples=200)
        variants = lean_smollm_variants(args.steps or setup.steps)
        targets = LeanTargets(peak_over_inference=1.05, wall_over_reference=10, gain_fraction=0.5)
    else:
        # the whole test split: 25 documents, 513 blocks of 128 tokens (lm counts blocks)
        setup = Setup("smollm2-135m", "brown", batch=4, seq=128, steps=30, eval_samples=1000)
        variants = smollm_variants()
    setup = Setup(
        **{
            **setup.__dict__,
            "rounds": args.rounds,
            "threads": args.threads,
            **({"steps": args.steps} if args.steps else {}),
            **({"eval_samples": args.eval_samples} if args.eval_samples else {}),
        }
    )
    if args.only:
        keep = set(args.only.split(","))
        variants = [v for v in variants if v.label in keep]
    name = args.name or f"methods-{args.preset}"
    if args.lr_sweep:
        result = sweep(setup, variants, [float(f) for f in args.lr_sweep.split(",")],
                       log=lambda m: print(m, file=sys.stderr, flush=True))  # fmt: skip
        table = sweep_table(result)
        for p in write_json_md(result, RESULTS, f"{name}-lr", table):
            print(f"wrote {p}", file=sys.stderr)
        print(table)
        return
    summary = compare(
        setup,
        variants,
        args.repeats,
        accuracy=None if args.accuracy is None else set(filter(None, args.accuracy.split(","))),
        log=lambda m: print(m, file=sys.stderr, flush=True),
    )
    if targets is None:
        table = methods_table(summary)
        paths = write_outputs(summary, RESULTS, name, table)
    else:
        verdicts = lean_verdicts(summary, targets)
        table = lean_table(summary, verdicts)
        paths = write_outputs({**summary, "verdicts": verdicts}, RESULTS, name, table,
                              plot=lambda s, png: plot_lean(s, verdicts, png))  # fmt: skip
    for p in paths:
        print(f"wrote {p}", file=sys.stderr)
    print(table)


if __name__ == "__main__":
    main()
