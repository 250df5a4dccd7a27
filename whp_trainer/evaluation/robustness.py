"""Robustness of forgetting: the attacks that bring unlearned knowledge back, done to any model alike.

Relearning from a little text (Lynch et al. 2024), hints and many-shot forget passages in the prompt, and
quantization of the merged model (Zhang et al. 2025: 4-bit quantization restores much of what unlearning removed).
"""

from __future__ import annotations

import contextlib
import copy
import random
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..anchors import AnchorDictionary
from ..batching import pad_token_id, padded_batch
from ..collator import split_into_blocks
from ..models import BASELINE, guard_cpu_4bit
from .familiarity import token_familiarity
from .knowledge import knowledge_context

QUANTIZATIONS = ("int8", "nf4")  # the quantization attacks: bitsandbytes 8-bit and 4-bit NormalFloat


def relearning_probe(
    model,
    tokenizer,
    texts: list[str],
    probes: Sequence[dict],
    steps: int = 10,
    learning_rate: float = 1e-4,
    batch_size: int = 4,
    max_length: int = 128,
) -> dict:
    """Token familiarity before and after ``steps`` AdamW steps of causal-LM fine-tuning on ``texts``.

    Only the trainable parameters move (a ``PeftModel``: its active adapter); blocks of ``max_length`` tokens are
    cycled through in order. Every trainable parameter is saved first and restored afterwards, gradients are cleared
    and the optimizer is dropped, so the model is left bit-identical, in its train/eval mode.

    Returns:
        ``{"before": float, "after": float, "loss": float}`` (the loss of the last step).
    """
    before = token_familiarity(model, tokenizer, probes, batch_size=batch_size)
    after = relearned(model, tokenizer, texts, lambda: {"after": token_familiarity(model, tokenizer, probes,
                                                                                   batch_size=batch_size)},
                      steps, learning_rate, batch_size, max_length)
    return {"before": before, **after}


def relearned(
    model, tokenizer, texts: list[str], measure: Callable[[], dict], steps: int = 10, learning_rate: float = 1e-4,
    batch_size: int = 4, max_length: int = 128,
) -> dict:
    """``measure()``'s metrics after ``steps`` AdamW steps of causal-LM fine-tuning of the trainable parameters on
    ``texts`` (blocks of ``max_length`` tokens, cycled in order), with ``"loss"``, the last step's loss. The trainable
    parameters are restored afterwards, gradients cleared and the train/eval mode restored: the model is left
    bit-identical."""
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    if not parameters:
        raise ValueError("relearning: the model has no trainable parameter (activate an adapter to fine-tune)")
    blocks = split_into_blocks(list(texts), tokenizer, max_length)
    if not blocks:
        raise ValueError("relearning: no text of at least 2 tokens")
    saved = [parameter.detach().clone() for parameter in parameters]
    was_training = model.training
    try:
        loss = _fine_tune(model, parameters, blocks, pad_token_id(tokenizer), steps, learning_rate, batch_size)
        return {**measure(), "loss": loss}
    finally:
        with torch.no_grad():
            for parameter, value in zip(parameters, saved):
                parameter.copy_(value)
                parameter.grad = None
        model.train(was_training)


def _fine_tune(model, parameters, blocks, pad_id: int, steps: int, learning_rate: float, batch_size: int) -> float:
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate)
    model.train()
    loss = torch.tensor(float("nan"))
    with torch.enable_grad():
        for step in range(steps):
            chosen = [blocks[(step * batch_size + offset) % len(blocks)] for offset in range(batch_size)]
            loss = model(**padded_batch(chosen, pad_id, device=model.device)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return loss.item()


def hint_probes(
    probes: Sequence[dict], dictionary: AnchorDictionary, hints_per_probe: int = 2, seed: int = 0
) -> list[dict]:
    """The probes with a prefix naming other anchors of the target: ``"Think of Hogwarts and Ron. " + prompt``.

    Hints are drawn (with ``seed``, deterministically) among the anchors that occur (case-insensitively, even inside
    a word) neither in the prompt nor in the target, so a hint never gives the answer away. Comparing token
    familiarity with and without hints measures in-context re-extraction. Each returned probe also records its
    ``hints``.
    """
    rng = random.Random(seed)
    hinted = []
    for probe in probes:
        text = (probe["prompt"] + " " + probe["target"]).lower()
        candidates = [anchor for anchor in dictionary if anchor.lower() not in text]
        hints = rng.sample(candidates, min(hints_per_probe, len(candidates)))
        prefix = f"Think of {_listed(hints)}. " if hints else ""
        hinted.append({**probe, "prompt": prefix + probe["prompt"], "hints": hints})
    return hinted


def _listed(items: list[str]) -> str:
    """``"A"``, ``"A and B"``, ``"A, B and C"``."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def many_shot_probes(
    probes: Sequence[dict], passages: Sequence[str], tokenizer, shots: int = 8, max_tokens: int = 512, seed: int = 0
) -> list[dict]:
    """The probes after up to ``shots`` forget ``passages`` (blank-line separated, drawn once with ``seed``): in-context
    extraction. A passage holding the probe's own sentence (the end of its prompt and its target) is left out, so the
    answer cannot be copied; passages are dropped from the end until prompt and passages fit ``max_tokens``."""
    chosen = random.Random(seed).sample(list(passages), min(shots, len(passages)))
    shot = []
    for probe in probes:
        sentence = probe["prompt"][-30:] + probe["target"]
        fitting = [passage for passage in chosen if sentence not in passage]
        shot.append({**probe, "prompt": _prefixed(tokenizer, fitting, probe["prompt"], max_tokens)})
    return shot


def many_shot_knowledge(
    rows: Sequence[dict], passages: Sequence[str], tokenizer, shots: int = 8, max_tokens: int = 512, seed: int = 0
) -> list[dict]:
    """Knowledge rows (see `load_knowledge`) as cloze rows whose prompt holds up to ``shots`` forget ``passages``
    before the question or prompt, fitted to ``max_tokens`` as in `many_shot_probes`."""
    chosen = random.Random(seed).sample(list(passages), min(shots, len(passages)))
    shot = []
    for row in rows:
        context, true, false = knowledge_context(row)
        prompt = _prefixed(tokenizer, chosen, context, max_tokens - len(tokenizer(true)["input_ids"]))
        shot.append({"prompt": prompt, "answer": true, **({"false_answer": false} if false is not None else {})})
    return shot


def _prefixed(tokenizer, passages: list[str], prompt: str, max_tokens: int) -> str:
    """``passages`` and ``prompt``, blank-line separated, with passages dropped from the end until it fits; when not
    even the first passage fits whole, as much of its end as fits (forget text in the context, not none)."""
    passages = list(passages)
    first = passages[:1]
    while passages and len(tokenizer("\n\n".join([*passages, prompt]))["input_ids"]) > max_tokens:
        passages.pop()
    if first and not passages:
        room = max_tokens - len(tokenizer(prompt + "\n\n")["input_ids"])
        ids = tokenizer(first[0], add_special_tokens=False)["input_ids"]
        passages = [tokenizer.decode(ids[-room:]).strip()] if room > 0 else []
    return "\n\n".join([*passages, prompt])


@contextlib.contextmanager
def quantized(model, adapter: str | None, quantization: str):
    """``model`` with ``adapter`` (``BASELINE``: none) merged into its weights, reloaded quantized by bitsandbytes
    (``"int8"``: LLM.int8; ``"nf4"``: 4-bit NormalFloat computing in the model's dtype) for the block, as someone
    quantizing the published merged model would. The weights go through a temporary folder; ``model`` is unchanged.
    A quantized base is dequantized first."""
    from transformers import BitsAndBytesConfig

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization={quantization!r}: expected one of {list(QUANTIZATIONS)}")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    state = merged_state_dict(model, adapter)
    dtype = base.get_input_embeddings().weight.dtype
    config = (BitsAndBytesConfig(load_in_8bit=True) if quantization == "int8" else
              BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype))
    with tempfile.TemporaryDirectory(prefix="whp-quantized-") as folder:
        save_weights(base.config, state, Path(folder))
        del state
        reloaded = type(base).from_pretrained(folder, quantization_config=config, dtype=dtype,
                                              device_map={"": base.device})
        guard_cpu_4bit(reloaded)
        try:
            yield reloaded.eval()
        finally:
            del reloaded


@contextlib.contextmanager
def adapter_moved(model, adapter: str | None, full_precision):
    """``model``'s LoRA ``adapter`` put on ``full_precision`` (the same base, not quantized) for the block, as
    someone loading an adapter trained on a quantized base onto the full-precision base would; ``BASELINE``: the
    full-precision base itself. The adapter is removed from ``full_precision`` afterwards."""
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    if adapter is BASELINE:
        yield full_precision
        return
    config = copy.deepcopy(model.peft_config[adapter])
    config.inference_mode, config.base_model_name_or_path = True, None
    moved = get_peft_model(full_precision, config, adapter_name=adapter)
    set_peft_model_state_dict(moved, get_peft_model_state_dict(model, adapter_name=adapter), adapter_name=adapter)
    try:
        yield moved
    finally:
        moved.unload()


@contextlib.contextmanager
def as_exported(model, adapter: str | None, full_precision=None):
    """``(model, adapter)`` as `whp export` merges them, for the block: an adapter trained on a quantized base goes
    onto ``full_precision`` (the same base unquantized; ``BASELINE``: that base alone); without it, or when it is
    ``model`` itself, ``model`` and ``adapter`` as they are. Merging into the dequantized base instead would put every
    weight back on the quantization grid, to which re-quantizing returns it."""
    if full_precision is None or full_precision is model:
        yield model, adapter
        return
    with adapter_moved(model, adapter, full_precision) as moved:
        yield moved, adapter


def save_weights(config, state: dict[str, torch.Tensor], folder: Path) -> None:
    """``config`` (without its quantization) and ``state`` as a model folder that ``from_pretrained`` reads; a tensor
    shared with an earlier one (tied embeddings) is saved once."""
    from safetensors.torch import save_file

    config = copy.deepcopy(config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(folder)
    seen, unique = set(), {}
    for name, tensor in state.items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            unique[name] = tensor.detach().to("cpu").contiguous()
    save_file(unique, str(folder / "model.safetensors"), metadata={"format": "pt"})


def merged_state_dict(model, adapter: str | None) -> dict[str, torch.Tensor]:
    """The weights of ``model``'s base (a ``PeftModel``'s, or a plain model's) with the LoRA ``adapter`` merged
    (``BASELINE``: none), under the base model's own parameter names; quantized layers are dequantized. Nothing is
    modified in place."""
    from peft.tuners.lora import LoraLayer
    from peft.utils.integrations import dequantize_module_weight

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    dtype = base.get_input_embeddings().weight.dtype
    adapted = {name for name, module in base.named_modules() if isinstance(module, LoraLayer)}
    state = {}
    for name, module in base.named_modules():
        if any(name.startswith(outer + ".") for outer in adapted):
            continue  # inside an adapted layer: its base layer and adapter weights, merged below
        prefix = f"{name}." if name else ""
        if isinstance(module, LoraLayer):
            layer = module.get_base_layer()
            weight = dequantize_module_weight(layer).float()
            if adapter is not BASELINE and adapter in module.scaling:
                weight = weight + module.get_delta_weight(adapter).float()
            state[prefix + "weight"] = weight.to(dtype)
            if getattr(layer, "bias", None) is not None:
                state[prefix + "bias"] = layer.bias.detach()
        elif _is_quantized_linear(module):
            state[prefix + "weight"] = dequantize_module_weight(module).to(dtype)
            if module.bias is not None:
                state[prefix + "bias"] = module.bias.detach()
        else:
            state.update({prefix + key: value.detach() for key, value in module._parameters.items() if value is not None})
            state.update({prefix + key: value for key, value in module._buffers.items()
                          if value is not None and key not in module._non_persistent_buffers_set})
    return state


def _is_quantized_linear(module) -> bool:
    try:
        from bitsandbytes.nn import Linear4bit, Linear8bitLt
    except ImportError:
        return False
    return isinstance(module, (Linear4bit, Linear8bitLt))
