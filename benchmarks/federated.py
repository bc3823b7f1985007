"""Federated benchmark: accuracy against centralized training, and payload per method.

    .venv/bin/python benchmarks/federated.py            # full: 25 local steps, ~1 hour on 2 cores
    .venv/bin/python benchmarks/federated.py --local-steps 4 --strategy fedavgm
    .venv/bin/python benchmarks/federated.py --quick    # a smoke run of every part
    .venv/bin/python benchmarks/federated.py --reuse    # keep finished runs, do the rest
    .venv/bin/python benchmarks/federated.py --only accuracy   # rerun one part, keep the other

1. Accuracy: MiniLM on Reuters-R8, 8 clients x 5 rounds x `--local-steps`, non-IID
   Dirichlet(alpha 0.5), `--strategy` (FedAvg by default), backprop, in Flower's Simulation
   Engine; then centralized backprop on the same number of
   training samples (8 clients x 5 rounds x local steps x batch), same learning rate, schedule,
   sequence length and test rows.
2. Payload: one short simulated round per method (backprop with each codec, sparse, lora,
   mezo); bytes up per client per round as measured from the serialized replies.

Writes benchmarks/results/federated.json, federated.md and fl_*.png; the run folders go to
runs/benchmarks/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from edgetune.config import load_config
from edgetune.federated.simulate import simulate
from edgetune.train import finetune

RESULTS = Path(__file__).parent / "results"
WORK = Path(__file__).parents[1] / "runs" / "benchmarks"  # run folders (models): not in git
BASE = {"model.name": "minilm-l6", "data.name": "reuters-r8", "data.seq_len": 64,
        "train.batch_size": 16, "train.lr": 3e-4, "train.threads": 1}  # fmt: skip


def timed(folder: Path, run, reuse: bool) -> tuple[dict, float]:
    """run() -> (result, wall seconds); with `reuse`, a finished run folder is read instead."""
    done = folder / "bench.json"
    if reuse and done.is_file():
        return json.loads(done.read_text())["result"], json.loads(done.read_text())["wall_s"]
    start = time.perf_counter()
    result = run()
    wall = time.perf_counter() - start
    done.write_text(json.dumps({"result": result, "wall_s": wall}, default=str))
    return result, wall


def accuracy_run(clients: int, rounds: int, steps: int, eval_rows: int | None, work: Path, reuse,
                 strategy: str = "fedavg"):  # fmt: skip
    fed = {**BASE, "train.method": "backprop", "out": str(work / "federated"),
           "federated.clients": clients, "federated.rounds": rounds,
           "federated.local_steps": steps, "federated.partition": "dirichlet",
           "federated.alpha": 0.5, "federated.min_clients": clients,
           "federated.strategy": strategy,
           # a cold first round (every client actor loads the model and data, 4 clients per
           # core) takes far longer than the 600 s default on 2 cores
           "federated.timeout": 7200}  # fmt: skip
    limit = {"data.eval_samples": eval_rows} if eval_rows else {}
    fed.update(limit)
    fl, fl_s = timed(work / "federated", lambda: simulate(fed), reuse)
    short = [r for r in fl["per_round"] if r["clients"] != clients]
    if short:  # a round that aggregated fewer clients is not the experiment described
        failed = [f for r in fl["rounds"] for f in r["failed"]]
        raise SystemExit(f"rounds {[r['round'] for r in short]} aggregated fewer than "
                         f"{clients} clients: {failed[:3]}")  # fmt: skip
    samples = clients * rounds * steps * BASE["train.batch_size"]
    central_run = {**BASE, "train.max_steps": clients * rounds * steps, "train.threads": 2,
                   "out": str(work / "central"), **limit}  # fmt: skip
    cfg = load_config(None, central_run)
    central, central_s = timed(work / "central", lambda: finetune(cfg).metrics, reuse)
    last = fl["rounds"][-1]["global_eval"]
    return {
        "setup": {k: fed[k] for k in fed if k != "out"},
        "train_samples_each": samples,
        "federated": {"accuracy": last["accuracy"], "macro_f1": last["macro_f1"],
                      "test_rows": last["samples"], "wall_s": fl_s,
                      "per_round": fl["per_round"]},
        "centralized": {"accuracy": central["eval"]["accuracy"],
                        "macro_f1": central["eval"]["macro_f1"], "wall_s": central_s},
        "gap_points": 100 * (central["eval"]["accuracy"] - last["accuracy"]),
    }  # fmt: skip


PAYLOADS = [
    ("backprop", "fp32", {}),
    ("backprop", "fp16", {}),
    ("backprop", "int8", {}),
    ("backprop", "topk", {"federated.topk_fraction": 0.01}),
    ("sparse", "fp32", {}),
    ("sparse", "fp16", {}),
    ("lora", "fp32", {}),
    ("mezo", "fp32", {}),
]


def payload_runs(steps: int, work: Path, reuse: bool) -> list[dict]:
    rows = []
    for method, codec, extra in PAYLOADS:
        name = f"{method}-{codec}"
        run = {**BASE, "train.method": method, "out": str(work / name),
               "federated.clients": 2, "federated.rounds": 1, "federated.local_steps": steps,
               "federated.compress": codec, "data.train_samples": 64,
               "data.eval_samples": 16, **extra}  # fmt: skip
        fl, _ = timed(work / name, lambda run=run: simulate(run), reuse)
        up = [c["bytes_up"] for c in fl["clients"] if c["status"] == "accepted"]
        rows.append({
            "method": method, "codec": "seeds" if method == "mezo" else codec,
            "bytes_up": max(up), "bytes_down": fl["per_round"][0]["bytes_down"],
            "params_trainable_state": fl["params_trainable_state"],
            "params_total": fl["params_total"],
            "trainable_fraction": fl["params_trainable_state"] / fl["params_total"],
        })  # fmt: skip
        print(name, rows[-1], flush=True)
    full = next(r["bytes_up"] for r in rows if r["method"] == "backprop" and r["codec"] == "fp32")
    for r in rows:
        r["share_of_full"] = r["bytes_up"] / full
    return rows


def markdown(acc: dict, pay: list[dict]) -> str:
    f, c = acc["federated"], acc["centralized"]
    s = acc["setup"]
    lines = [
        f"MiniLM-L6 on Reuters-R8, {s['federated.clients']} clients x {s['federated.rounds']} "
        f"rounds x {s['federated.local_steps']} local steps (batch 16, seq 64), Dirichlet alpha "
        f"{s['federated.alpha']}, {s['federated.strategy']}, backprop; centralized on the same "
        f"{acc['train_samples_each']} training samples; {f['test_rows']} test rows.",
        "",
        "| run | accuracy | macro-F1 | wall s |",
        "|---|---:|---:|---:|",
        f"| federated (simulation) | {f['accuracy']:.4f} | {f['macro_f1']:.4f} "
        f"| {f['wall_s']:.0f} |",
        f"| centralized | {c['accuracy']:.4f} | {c['macro_f1']:.4f} | {c['wall_s']:.0f} |",
        "",
        f"Gap: {acc['gap_points']:+.2f} accuracy points (centralized minus federated).",
        "",
        "| round | clients aggregated | global accuracy after the round |",
        "|---:|---:|---:|",
        *(
            f"| {r['round']} | {r['clients']} | {r['metric'].get('accuracy', float('nan')):.4f} |"
            for r in f["per_round"]
        ),
        "",
        "| method | payload up | bytes up / client / round | share of full weights "
        "| trainable fraction | bytes down |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in pay:
        lines.append(
            f"| {r['method']} | {r['codec']} | {r['bytes_up']:,} "
            f"| {100 * r['share_of_full']:.3f} % | {100 * r['trainable_fraction']:.3f} % "
            f"| {r['bytes_down']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budget, to check the script")
    parser.add_argument("--reuse", action="store_true", help="read finished runs, rerun the rest")
    parser.add_argument("--local-steps", type=int, default=25, help="client steps per round")
    parser.add_argument("--strategy", default="fedavg", help="Flower strategy of the accuracy run")
    parser.add_argument("--only", choices=["accuracy", "payload"],
                        help="run one part; the other is kept from the results file")  # fmt: skip
    args = parser.parse_args()
    work = WORK / ("federated-quick" if args.quick else "federated")
    if not args.reuse:
        shutil.rmtree(work, ignore_errors=True)
    suffix = "-quick" if args.quick else ""
    kept = RESULTS / f"federated{suffix}.json"
    previous = json.loads(kept.read_text()) if args.only and kept.is_file() else {}
    if args.only == "payload":
        acc = previous["accuracy"]
    elif args.quick:
        acc = accuracy_run(clients=2, rounds=1, steps=2, eval_rows=64, work=work, reuse=args.reuse)
    else:
        acc = accuracy_run(clients=8, rounds=5, steps=args.local_steps, eval_rows=1000, work=work,
                           reuse=args.reuse, strategy=args.strategy)  # fmt: skip
    if args.only == "accuracy":
        pay = previous["payload"]
    else:
        pay = payload_runs(steps=1 if args.quick else 2, work=work, reuse=args.reuse)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"federated{suffix}.json").write_text(
        json.dumps({"accuracy": acc, "payload": pay}, indent=1)
    )
    (RESULTS / f"federated{suffix}.md").write_text(markdown(acc, pay))
    for png in (work / "federated").glob("fl_*.png"):
        shutil.copy(png, RESULTS / png.name.replace(".png", f"{suffix}.png"))
    print(markdown(acc, pay))


if __name__ == "__main__":
    main()
