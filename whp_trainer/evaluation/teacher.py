"""The generic-logit teacher as a model: inference-time WHP on the shared base (MUSE's "WHP" baseline).

``v_baseline − α·ReLU(v_reinforced − v_baseline)`` on the text as it is (no anchor translation: the bootstrapping
teacher), evaluated like any model. A student trained towards these targets can at best become this teacher, so
measuring it at a few α tells, in seconds and before training, how far the method can go and which α to use. Each
role's logits come from [`role_logits`][whp_trainer.models.role_logits], the path of the trainer's teacher passes.
"""

from __future__ import annotations

import torch
from transformers.modeling_outputs import CausalLMOutput

from ..models import BASELINE, role_logits
from ..targets import generic_logits


class GenericTeacher(torch.nn.Module):
    """A causal-LM-like view of one ``PeftModel``: each forward runs the base (adapters disabled) and the
    ``adapter`` (the reinforced one) on the same input and returns the generic logits. Never trained.

    It answers what the evaluation metrics ask of a model: ``forward(input_ids, attention_mask, …).logits``,
    ``generate`` (greedy or sampled, without a KV cache: each new token re-reads the context) and ``device``.
    """

    def __init__(self, model, adapter: str, alpha: float, relu: bool = True, spared: torch.Tensor | None = None):
        super().__init__()
        if adapter not in model.peft_config:
            raise ValueError(f"GenericTeacher: the model has no adapter named {adapter!r}")
        self.model, self.adapter, self.alpha, self.relu, self.spared = model, adapter, alpha, relu, spared

    @property
    def device(self) -> torch.device:
        return self.model.device

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep: int = 0, **ignored):
        """Generic logits ``(B, T or logits_to_keep, V)`` (float32); ``labels`` and other keys are ignored."""
        baseline, reinforced = self.role_logits(input_ids, attention_mask, position_ids, logits_to_keep)
        return CausalLMOutput(logits=generic_logits(baseline, reinforced, self.alpha, relu=self.relu,
                                                    spared=self.spared))

    def role_logits(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep: int = 0):
        """The two teacher passes: the baseline's and the reinforced adapter's float logits of the same input (the
        generic logits of any α follow from them without another pass)."""
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      logits_to_keep=logits_to_keep)
        baseline = role_logits(self.model, adapter=BASELINE, **inputs)
        reinforced = role_logits(self.model, adapter=self.adapter, **inputs)
        return baseline, reinforced

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, pad_token_id: int = 0, max_new_tokens: int = 20,
                 do_sample: bool = False, temperature: float = 1.0, num_return_sequences: int = 1,
                 eos_token_id: int | None = None, **ignored) -> torch.Tensor:
        """Left-padded ``input_ids`` followed by ``max_new_tokens`` new tokens (``pad_token_id`` after an end)."""
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        ids = input_ids.repeat_interleave(num_return_sequences, 0)
        mask = attention_mask.repeat_interleave(num_return_sequences, 0)
        eos = eos_token_id if eos_token_id is not None else getattr(self.model.config, "eos_token_id", None)
        finished = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
        for _ in range(max_new_tokens):
            logits = self(ids, attention_mask=mask, logits_to_keep=1).logits[:, -1]
            if do_sample:
                token = torch.multinomial(torch.softmax(logits / temperature, -1), 1).squeeze(-1)
            else:
                token = logits.argmax(-1)
            token = token.masked_fill(finished, pad_token_id)
            if eos is not None:
                finished |= token == eos
            ids = torch.cat([ids, token[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        return ids
