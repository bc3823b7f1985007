"""The server's record of a federated run: who sent what, how long it took, what was refused,
the global state after each round (checkpointed atomically) and the final report.

Per client and round: bytes down and up (serialized messages), local compute seconds, tokens,
tokens/s, FLOPs (estimate) and MFU against the device profile's peak ("unknown" without one),
transfer times on the network profile and the compute/communication ratio; failures (crash,
timeout) and rejected updates with their reason. Written as `federated.json`, `summary.md` and
three figures (metric, bytes, time split over rounds) in the run folder.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from edgetune.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from edgetune.federated.network import Network, round_times
from edgetune.io import atomic_write_text
from edgetune.report.figures import plot_federated


class Ledger:
    def __init__(
        self, out: Path, identity: dict[str, str], network: Network, peak: float | None
    ) -> None:
        self.out, self.identity, self.network, self.peak = out, identity, network, peak
        self.offset = 0  # rounds done before this process started (resume)
        self.clients: dict[tuple[int, int], dict[str, Any]] = {}
        self.rounds: dict[int, dict[str, Any]] = {}

    # -- events ---------------------------------------------------------------------------
    def _row(self, rnd: int, node: int) -> dict[str, Any]:
        key = (rnd + self.offset, node)
        return self.clients.setdefault(key, {"round": key[0], "node": node, "status": "sent"})

    def _round(self, rnd: int) -> dict[str, Any]:
        r = rnd + self.offset
        return self.rounds.setdefault(r, {"round": r, "failed": [], "rejected": []})

    def sent(self, rnd: int, node: int, nbytes: int) -> None:
        self._row(rnd, node)["bytes_down"] = nbytes

    def received(self, rnd: int, node: int, nbytes: int, metrics: dict[str, Any]) -> None:
        row = self._row(rnd, node)
        row.update(status="accepted", bytes_up=nbytes)
        row["partition"] = int(metrics.get("partition-id", -1))
        for key in ("train-loss", "train-s", "tokens", "flops", "num-examples"):
            row[key.replace("-", "_")] = metrics.get(key)
        busy = float(metrics.get("train-s") or 0.0)
        row["tokens_per_s"] = row["tokens"] / busy if busy and row["tokens"] else None
        achieved = row["flops"] / busy if busy and row["flops"] else None
        row["mfu"] = achieved / self.peak if achieved and self.peak else "unknown"
        if isinstance(row["mfu"], float) and row["mfu"] > 1:  # a peak measured under load
            row["mfu"] = "unknown (above the device profile's peak: measure it again)"
        row.update(round_times(self.network, nbytes, row.get("bytes_down", 0), busy))

    def failed(self, rnd: int, node: int, reason: str | None) -> None:
        reason = reason.splitlines()[0][:300] if reason else "no reason given"
        self._row(rnd, node).update(status="failed", reason=reason)
        self._round(rnd)["failed"].append({"node": node, "reason": reason})

    def awaited(self, rnd: int, node: int) -> bool:
        """Whether `node` was sent round `rnd`'s model and has not answered yet."""
        return self.clients.get((rnd + self.offset, node), {}).get("status") == "sent"

    def unanswered(self, rnd: int, timeout: float, why: Sequence[str] = ()) -> list[int]:
        """Mark the clients of round `rnd` that were sent the model but never replied (Flower
        stops waiting after `federated.timeout`) as failed, with what Flower said of nodes it
        gave up on (`why`); their nodes."""
        r = rnd + self.offset
        silent = [n for (k, n), row in self.clients.items() if k == r and row["status"] == "sent"]
        said = "; ".join(dict.fromkeys(w.splitlines()[0] for w in why))
        for node in silent:
            self.failed(rnd, node, f"no reply within federated.timeout ({timeout:g} s)"
                        + (f" (Flower: {said})" if said else ""))  # fmt: skip
        return silent

    def rejected(self, rnd: int, node: int, reason: str) -> None:
        self._row(rnd, node).update(status="rejected", reason=reason)
        self._round(rnd)["rejected"].append({"node": node, "reason": reason})

    def evaluated_locally(self, rnd: int, per_client: list[dict[str, Any]]) -> None:
        self._round(rnd)["client_eval"] = per_client

    def evaluated_globally(self, rnd: int, metrics: dict[str, float]) -> None:
        self._round(rnd)["global_eval"] = metrics

    def aggregated(self, rnd: int, state: dict[str, torch.Tensor]) -> None:
        """A round's new global state: checkpoint it (atomic folder, safetensors)."""
        r = rnd + self.offset
        self._round(rnd)["clients_aggregated"] = sum(
            1 for (k, _), row in self.clients.items() if k == r and row["status"] == "accepted"
        )
        log = json.dumps(self.to_dict())
        save_checkpoint(self.out, r, self.identity, state, {"ledger": log}, keep=2)

    # -- resume ---------------------------------------------------------------------------
    def resume(self) -> dict[str, torch.Tensor] | None:
        """The newest round checkpoint's global state (and this ledger's past rows), if any."""
        found = list_checkpoints(self.out)
        if not found:
            return None
        ckpt = load_checkpoint(found[-1], self.identity)
        past = json.loads(ckpt.state["ledger"])
        self.offset = ckpt.step
        for row in past["clients"]:
            self.clients[(row["round"], row["node"])] = row
        self.rounds = {r["round"]: r for r in past["rounds"]}
        return ckpt.trainable

    # -- report ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "network": self.network.to_dict(),
            "peak_flops": self.peak if self.peak else "unknown",
            "rounds": [self.rounds[k] for k in sorted(self.rounds)],
            "clients": [self.clients[k] for k in sorted(self.clients)],
        }

    def per_round(self) -> list[dict[str, Any]]:
        """Per round: the clients sampled and those whose update was aggregated (`clients`),
        means over the aggregated ones, and the global metric after the round. A round in which
        no update was aggregated leaves the global model as it was: its metric repeats."""
        out = []
        for r in sorted({k for k, _ in self.clients}):
            sampled = [v for (k, _), v in self.clients.items() if k == r]
            rows = [v for v in sampled if v["status"] == "accepted"]
            row: dict[str, Any] = {"round": r, "sampled": len(sampled), "clients": len(rows)}
            for key in ("bytes_up", "bytes_down", "compute_s", "comm_s"):
                row[key] = statistics.fmean(v[key] for v in rows) if rows else 0.0
            row["metric"] = self.rounds.get(r, {}).get("global_eval", {})
            out.append(row)
        return out

    def write(self, extra: dict[str, Any]) -> dict[str, Any]:
        """federated.json, summary.md and the figures; returns what federated.json holds."""
        data = {**extra, **self.to_dict(), "per_round": self.per_round()}
        atomic_write_text(self.out / "federated.json", json.dumps(data, indent=1, default=str))
        atomic_write_text(self.out / "summary.md", markdown(data))
        plot_federated(data, self.out)
        return data


def markdown(data: dict[str, Any]) -> str:
    net = data["network"]["name"]
    lines = [
        f"# Federated run: {data.get('method', '')} on {data.get('model', '')}",
        "",
        f"| round | clients aggregated / sampled | up B/client | down B/client | compute s "
        f"| comm s ({net}) | metric after the round |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in data["per_round"]:
        metric = ", ".join(f"{k} {v:.4f}" for k, v in r["metric"].items() if k != "samples")
        lines.append(
            f"| {r['round']} | {r['clients']} / {r.get('sampled', r['clients'])} "
            f"| {r['bytes_up']:,.0f} | {r['bytes_down']:,.0f} "
            f"| {r['compute_s']:.2f} | {r['comm_s']:.2f} | {metric} |"
        )
    bad = [(r["round"], x) for r in data["rounds"] for x in r["failed"] + r["rejected"]]
    if bad:
        lines += [
            "",
            "Left out:",
            *(f"- round {r}: node {x['node']}: {x['reason']}" for r, x in bad),
        ]
    return "\n".join(lines) + "\n"
