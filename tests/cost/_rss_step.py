"""Run in a fresh interpreter by test_rss.py: training steps of tiny BERT (MLM head) with the
runtime's methods, printing, per method, the growth of the resident set's high-water mark over
the resident set before the steps. Before each measurement warm-up steps on a tiny batch make
weights, optimizer state and library buffers resident, and the high-water mark is reset
(/proc/self/clear_refs, Linux)."""

import json
import sys

import torch
import transformers as T
from rules import RULES

from edgetune.cost import shape_from_config, step_cost
from edgetune.measure.memory import resident_growth
from edgetune.methods import METHODS, build_method
from edgetune.methods.base import MethodSettings
from edgetune.scheme import UpdateScheme

T.logging.set_verbosity_error()
torch.set_num_threads(1)
OPTIMIZER = {"mezo": "sgd", "pepita": "sgd", "mempepita": "sgd"}  # the rest: AdamW
# a measured name that is a method under options: (method, options)
VARIANTS = {"forward_grad": ("forward_grad", {"trainable": "all"}),
            "forward_grad-lora": ("forward_grad", {"trainable": "lora"})}  # fmt: skip


def measure(name: str, batch: int, seq: int) -> dict:
    method, options = VARIANTS.get(name, (name, {}))
    torch.manual_seed(0)
    cfg = T.BertConfig(vocab_size=256, hidden_size=128, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=512, max_position_embeddings=seq,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    cfg._attn_implementation = "eager"
    model = T.BertForMaskedLM(cfg).eval()
    scheme = UpdateScheme.qkv_ffn1(2, 1)
    options = {"scheme": scheme} if method in ("sparse", "hybrid") else options
    m = build_method(method, model, MethodSettings(lr=1e-6, total_steps=10, options=options))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (batch, seq), generator=g)
    labels = torch.randint(0, 256, (batch, seq), generator=g)
    small = {"input_ids": ids[:1, :8], "labels": labels[:1, :8]}
    full = {"input_ids": ids, "labels": labels}
    growth = resident_growth(lambda: (m.step([small]), m.step([small])),
                             lambda: (m.step([full]), m.step([full])))  # fmt: skip
    shape, spec = shape_from_config(cfg.to_dict()), METHODS[method]
    if name in VARIANTS:  # the registry's rule, optimizer and cost inputs for its options
        opts = spec.parse(options)
        c = step_cost(shape, spec.rule_for(opts), batch, seq, head="lm",
                      optimizer=spec.optimizer(opts), **spec.cost_inputs(opts, shape))  # fmt: skip
    else:
        c = step_cost(shape, RULES[method], batch, seq, head="lm", scheme=scheme,
                      optimizer=OPTIMIZER.get(method, "adamw"), zo_blocks=1)  # fmt: skip
    # weights and optimizer state were resident before the measured steps
    return {"measured": growth,
            "predicted": c.memory.peak - c.memory.weights - c.memory.optimizer}  # fmt: skip


if __name__ == "__main__":
    batch, seq = int(sys.argv[1]), int(sys.argv[2])
    print(json.dumps({m: measure(m, batch, seq) for m in sys.argv[3:]}))
