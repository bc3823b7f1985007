"""Classification with a causal LM through label words (the prompt-style tasks MeZO prefers).

`LabelWords(lm, word_ids)` turns a causal LM (Llama/SmolLM2, GPT-2) into a classifier: the logit
of class c is the LM head's logit of label word c (its first token id) at the last non-padding
position of the prompt; the loss is cross-entropy over the classes only (MeZO's
"train as classification"). It keeps the LM's module structure (`model`/`transformer` and
`lm_head` as direct children, the LM's config), so `edgetune.models.anatomy`, `mezo`, `sparse` and
`backprop` see the usual Llama/GPT-2 modules; the LM head is run as a module on the last position
only (so MeZO's perturbation hooks on it fire). `save_pretrained` saves the wrapped LM.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from edgetune.errors import EdgetuneError


class LabelWords(nn.Module):
    """A causal LM scored on the label words at the prompt's last token (right padding)."""

    def __init__(self, lm: nn.Module, word_ids: Sequence[int]) -> None:
        super().__init__()
        prefix = getattr(lm, "base_model_prefix", "")
        backbone = getattr(lm, prefix, None)
        if backbone is None or getattr(lm, "lm_head", None) is None:
            raise EdgetuneError("label words need a causal LM with a backbone and an lm_head")
        if len(set(word_ids)) != len(word_ids) or len(word_ids) < 2:
            raise EdgetuneError("label words need two or more distinct token ids")
        self.base_model_prefix = prefix
        self.config = lm.config
        setattr(self, prefix, backbone)
        self.lm_head = lm.lm_head
        self.register_buffer("word_ids", torch.tensor(list(word_ids)), persistent=False)
        object.__setattr__(self, "_lm", lm)  # not a child: no duplicate module names

    def get_input_embeddings(self) -> nn.Module:
        return self._lm.get_input_embeddings()  # type: ignore[union-attr, operator]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        backbone = getattr(self, self.base_model_prefix)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs)[0]
        if attention_mask is None:
            last = torch.full(input_ids.shape[:1], input_ids.shape[1] - 1, device=hidden.device)
        else:
            last = attention_mask.sum(1) - 1
        h = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, d)
        logits = self.lm_head(h)[:, self.word_ids]  # type: ignore[operator]  # (B, C)
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def save_pretrained(self, *args, **kwargs):
        return self._lm.save_pretrained(*args, **kwargs)
