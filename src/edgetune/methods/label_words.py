"""Classification through label words: the prompt-style tasks MeZO prefers (Gao et al. 2021,
Malladi et al. 2023).

`LabelWords(lm, word_ids, mask_id)` turns a causal LM (Llama/SmolLM2, GPT-2) or a masked LM
(BERT/MiniLM, RoBERTa) into a classifier: the logit of class c is the LM head's logit of label
word c (its first token id) at the prompt's last non-padding position (causal, right padding)
or at its mask token (masked, `mask_id`); the loss is cross-entropy over the classes only
(MeZO's "train as classification"). It keeps the LM's module structure (the backbone and the
LM head, `lm_head` or BERT's `cls`, as direct children, the LM's config), so
`edgetune.models.anatomy`, `mezo`, `sparse`, `lora` and `backprop` see the usual modules; the
LM head is run as a module on the scored position only (so MeZO's perturbation hooks on it
fire). `save_pretrained` saves the wrapped LM. Runs reach it through `data.label_words` and
`data.prompt` (`edgetune.pipeline`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from edgetune.errors import EdgetuneError


class LabelWords(nn.Module):
    """An LM scored on the label words at the prompt's last token or at its mask token."""

    def __init__(self, lm: nn.Module, word_ids: Sequence[int], mask_id: int | None = None) -> None:
        super().__init__()
        prefix = getattr(lm, "base_model_prefix", "")
        backbone = getattr(lm, prefix, None)
        head = next((n for n in ("lm_head", "cls") if getattr(lm, n, None) is not None), None)
        if backbone is None or head is None:
            raise EdgetuneError("label words need a causal or masked LM with a backbone and an "
                                "LM head")  # fmt: skip
        if len(set(word_ids)) != len(word_ids) or len(word_ids) < 2:
            raise EdgetuneError("label words need two or more distinct token ids")
        self.base_model_prefix, self.head_name, self.mask_id = prefix, head, mask_id
        self.config = lm.config
        setattr(self, prefix, backbone)
        setattr(self, head, getattr(lm, head))
        self.register_buffer("word_ids", torch.tensor(list(word_ids)), persistent=False)
        object.__setattr__(self, "_lm", lm)  # not a child: no duplicate module names

    def get_input_embeddings(self) -> nn.Module:
        return self._lm.get_input_embeddings()  # type: ignore[union-attr, operator]

    @property
    def is_gradient_checkpointing(self) -> bool:
        """Whether the LM recomputes its blocks' activations. PEFT asks before it makes the
        input embeddings' output require grad (absent, it assumes so), which a plain backward
        does not need and a forward-mode pass (`forward_grad`) refuses."""
        return bool(getattr(self._lm, "is_activation_checkpointing", False))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        backbone = getattr(self, self.base_model_prefix)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs)[0]
        if self.mask_id is not None:  # the first mask token of each row
            at = (input_ids == self.mask_id).int().argmax(1)
        elif attention_mask is None:
            at = torch.full(input_ids.shape[:1], input_ids.shape[1] - 1, device=hidden.device)
        else:
            at = attention_mask.sum(1) - 1
        h = hidden[torch.arange(hidden.shape[0], device=hidden.device), at]  # (B, d)
        head = getattr(self, self.head_name)
        logits = head(h)[:, self.word_ids]  # (B, C)
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def save_pretrained(self, *args, **kwargs):
        return self._lm.save_pretrained(*args, **kwargs)
