"""Run in a fresh interpreter by test_rss.py: a tiny-BERT training step per method, printing,
per method, the growth of the resident set's high-water mark over the resident set before
the step. Before each measurement a warm-up step on a tiny batch makes weights, optimizer state
and library buffers resident, and the high-water mark is reset (/proc/self/clear_refs, Linux)."""

import gc
import json
import re
import sys

import torch
import transformers as T

from edgetune.cost import shape_from_config, step_cost
from edgetune.plan.scheme import UpdateScheme

T.logging.set_verbosity_error()
torch.set_num_threads(1)


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        text = f.read()
    return int(re.search(rf"{field}:\s+(\d+) kB", text).group(1)) * 1024


def measure(method: str, batch: int, seq: int) -> dict:
    torch.manual_seed(0)
    cfg = T.BertConfig(vocab_size=256, hidden_size=128, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=512, max_position_embeddings=seq,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    cfg._attn_implementation = "eager"
    model = T.BertForMaskedLM(cfg).eval()
    scheme = UpdateScheme.qkv_ffn1(2, 1)
    if method == "sparse":  # requires_grad on the scheme's units only (fraction 1)
        names = ["attention.self.query", "attention.self.key", "attention.self.value",
                 "intermediate.dense"]  # fmt: skip
        for n, p in model.named_parameters():
            layer1 = n.startswith("bert.encoder.layer.1.")
            p.requires_grad_(
                (layer1 and (any(k in n for k in names) or n.endswith(".bias")))
                or n.startswith("cls.predictions.transform")
                or n == "cls.predictions.bias"
            )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (batch, seq), generator=g)
    labels = torch.randint(0, 256, (batch, seq), generator=g)

    def step(ids, labels):
        if method == "mezo":  # two forward passes without autograd
            with torch.no_grad():
                model(input_ids=ids, labels=labels)
                model(input_ids=ids, labels=labels)
            return
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(ids[:1, :8], labels[:1, :8])
    step(ids[:1, :8], labels[:1, :8])
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current resident set
    base = _status("VmRSS")
    step(ids, labels)
    step(ids, labels)
    peak = _status("VmHWM")
    c = step_cost(shape_from_config(cfg.to_dict()), method, batch, seq, head="lm", scheme=scheme)
    # weights and optimizer state were resident before the measured steps
    return {"measured": peak - base,
            "predicted": c.memory.peak - c.memory.weights - c.memory.optimizer}  # fmt: skip


if __name__ == "__main__":
    batch, seq = int(sys.argv[1]), int(sys.argv[2])
    print(json.dumps({m: measure(m, batch, seq) for m in sys.argv[3:]}))
