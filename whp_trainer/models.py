"""One base model, three roles: baseline (adapters off), reinforced (a frozen adapter) and student (the trained one).

The teacher is never a copy of the model. Teacher passes switch adapters on the shared base and restore, afterwards,
exactly the active adapter, the train/eval mode and the set of trainable parameters.
"""

from __future__ import annotations

import contextlib
import logging
import os

import torch
import torch.nn.functional as F
from peft import PeftConfig, PeftModel, get_peft_model

from .batching import position_ids_from_mask

logger = logging.getLogger(__name__)

BASELINE = None  # the adapter "name" that means: all adapters disabled


def guard_cpu_4bit(model: torch.nn.Module) -> None:
    """Keep bitsandbytes 4-bit layers from repacking their weights for AVX512-BF16 on CPU.

    A ``Linear4bit`` run in eval mode without grad on such a CPU repacks its weights in place; training afterwards
    computes wrong gradients (and output sizes not divisible by 32 fail). Teacher passes are exactly such forwards.
    """
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:  # bitsandbytes is a dependency, but a broken install must not stop unquantized runs
        return
    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False


def prepare_unlearning_model(
    model: torch.nn.Module,
    peft_config: PeftConfig | None,
    reinforced_adapter: str | os.PathLike | None,
    unlearn_adapter_name: str = "default",
    reinforced_adapter_name: str = "reinforced",
) -> PeftModel:
    """Return a ``PeftModel`` with the trainable unlearning adapter active and the reinforced adapter loaded frozen.

    ``model`` is a base model or a ``PeftModel`` that already holds the reinforced adapter (under
    ``reinforced_adapter_name``) and/or the unlearning adapter (under ``unlearn_adapter_name``).
    """
    guard_cpu_4bit(model)
    if isinstance(model, PeftModel):
        if unlearn_adapter_name in model.peft_config:
            if peft_config is not None:
                raise ValueError(
                    f"the model already has an adapter named {unlearn_adapter_name!r} and peft_config was given; "
                    "load the reinforced adapter under another name, e.g. "
                    f"PeftModel.from_pretrained(base, path, adapter_name={reinforced_adapter_name!r})"
                )
        elif peft_config is None:
            raise ValueError(
                f"the model has no adapter named {unlearn_adapter_name!r} to train; pass peft_config "
                "(e.g. a LoraConfig) for the unlearning adapter"
            )
        else:
            model.add_adapter(unlearn_adapter_name, peft_config)
    else:
        if peft_config is None:
            raise ValueError("peft_config is required to add the unlearning adapter to a base model")
        model = get_peft_model(model, peft_config, adapter_name=unlearn_adapter_name)
    if reinforced_adapter is not None:
        load_reinforced_adapter(model, reinforced_adapter, reinforced_adapter_name)
    model.set_adapter(unlearn_adapter_name)
    return model


def load_reinforced_adapter(model: PeftModel, path: str | os.PathLike, adapter_name: str) -> None:
    """Load the reinforced adapter frozen, with an error naming the adapter when it does not fit the base."""
    if adapter_name in model.peft_config:
        raise ValueError(f"the model already holds an adapter named {adapter_name!r}; cannot load {path} as well")
    try:
        model.load_adapter(str(path), adapter_name=adapter_name, is_trainable=False)
    except RuntimeError as error:
        if "size mismatch" not in str(error):
            raise
        raise ValueError(
            f"reinforced adapter {path} does not match the base model "
            f"{getattr(model.config, '_name_or_path', '') or type(model.get_base_model()).__name__}: {error}"
        ) from error


def has_adapter(model: torch.nn.Module, name: str | None) -> bool:
    return name is not None and isinstance(model, PeftModel) and name in model.peft_config


@contextlib.contextmanager
def using_adapter(model: PeftModel, adapter: str | None = BASELINE, adapter_names: list[str] | None = None):
    """Run the block as one role of the shared base: with ``adapter`` active (``BASELINE``, i.e. ``None``: the base
    with adapters disabled), or, with ``adapter_names``, as PEFT's mixed batch (one adapter name per row,
    ``"__base__"`` for the base). The block runs in eval mode and without grad, as the teacher passes and the
    measurements of a role need; code inside that trains turns grad on itself (``torch.enable_grad()``).

    Restores the active adapter, the training flag and exactly which parameters were trainable.
    """
    was_training = model.training
    active = model.active_adapter
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.eval()  # no dropout; PEFT's mixed batches also require it
    try:
        with torch.no_grad():
            if adapter_names is not None:
                with model.base_model._enable_peft_forward_hooks(adapter_names=adapter_names):
                    yield
            elif adapter is BASELINE:
                with model.disable_adapter():
                    yield
            else:
                model.set_adapter(adapter)
                yield
    finally:
        if model.active_adapter != active:
            model.set_adapter(active)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        for parameter in trainable:
            parameter.requires_grad_(True)
        model.train(was_training)


def final_hidden_states(model: PeftModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden states after the decoder's last norm, i.e. what the LM head reads (``(B, T, H)``).

    The model's own forward runs (so FSDP2 or DeepSpeed ZeRO-3 gather the parameters of a sharded model through the
    hooks of its root), with the LM head skipped ([`head_input_captured`][whp_trainer.models.head_input_captured]).
    """
    with head_input_captured(model) as captured:
        model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        )
    return captured[-1]


@contextlib.contextmanager
def head_input_captured(model: PeftModel):
    """Within the block, the LM head records its input (the final hidden states) in the yielded list and computes
    logits for zero positions instead of all of them; forwards still run through the model and its wrappers."""
    captured = []

    def keep_input(module, args):
        captured.append(args[0])
        return (args[0][..., :0, :], *args[1:])

    handle = model.get_base_model().get_output_embeddings().register_forward_pre_hook(keep_input)
    try:
        yield captured
    finally:
        handle.remove()


def is_plain_linear(module: torch.nn.Module) -> bool:
    """An unquantized ``nn.Linear`` without adapter (FSDP2's wrapper class included), whose weight can be used
    directly."""
    return isinstance(module, torch.nn.Linear) and type(module).forward is torch.nn.Linear.forward


def plain_linear_head(model: PeftModel) -> torch.nn.Linear | None:
    """The LM head when it is a frozen, bias-free plain ``nn.Linear``; else ``None``."""
    head = model.get_base_model().get_output_embeddings()
    return head if is_plain_linear(head) and head.bias is None and not head.weight.requires_grad else None


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether FSDP2 (``fully_shard``) or DeepSpeed ZeRO-3 shards the model's parameters."""
    return any(_is_fsdp_module(module) for module in model.modules()) or any(
        hasattr(parameter, "ds_id") for parameter in model.parameters()
    )


def _is_fsdp_module(module: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


@contextlib.contextmanager
def gathered(model: torch.nn.Module, module: torch.nn.Module):
    """The whole parameters of ``module`` (a submodule of ``model``) for direct use in the block: unsharded by the
    FSDP2 unit that owns them and resharded afterwards, or gathered by DeepSpeed ZeRO-3; elsewhere nothing happens."""
    from torch.distributed.tensor import DTensor

    parameters = list(module.parameters(recurse=False))
    if is_sharded(model) and not is_plain_linear(module):
        raise ValueError(
            f"a sharded model (FSDP2 or ZeRO-3) needs a plain nn.Linear {type(module).__name__}: quantized or "
            "adapted LM heads would gather their weights once per chunk, a different number of times per process"
        )
    if any(hasattr(parameter, "ds_id") for parameter in parameters):
        import deepspeed

        with deepspeed.zero.GatheredParameters(parameters):
            yield
        return
    if not any(isinstance(parameter, DTensor) for parameter in parameters):
        yield
        return
    owner = _fsdp_owner(model, module)
    owner.unshard()
    try:
        yield
    finally:
        owner.reshard()


def _fsdp_owner(model: torch.nn.Module, module: torch.nn.Module) -> torch.nn.Module:
    """The innermost FSDP2 unit holding ``module`` (the module itself, when it is one)."""
    names = {sub: name for name, sub in model.named_modules()}
    path = names[module]
    owners = [sub for name, sub in model.named_modules() if _is_fsdp_module(sub) and _contains(name, path)]
    return max(owners, key=lambda sub: len(names[sub]))


def _contains(outer: str, inner: str) -> bool:
    return outer == "" or inner == outer or inner.startswith(outer + ".")


def logits_from_hidden(model: PeftModel, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head applied to ``hidden`` (float32), with final logit soft-capping where the model uses it.

    A plain ``nn.Linear`` head is applied through its weight, not its call, so that no FSDP2 or ZeRO-3 hook runs per
    chunk: on a sharded model, gather it once around all chunks with [`gathered`][whp_trainer.models.gathered].
    """
    head = model.get_base_model().get_output_embeddings()
    logits = (F.linear(hidden, head.weight, head.bias) if is_plain_linear(head) else head(hidden)).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def teacher_logits(
    model: PeftModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, adapter: str | None = BASELINE
) -> torch.Tensor:
    """Full logits ``(B, T, V)`` of one role, computed without grad (for evaluation and discovery)."""
    with using_adapter(model, adapter):
        return model(input_ids=input_ids, attention_mask=attention_mask).logits.float()


def adapter_weights(model: torch.nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """A copy, on the CPU, of one adapter's weights under the names its saved ``adapter_model.safetensors`` uses."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in state.items()}


def check_adapter_trained(initial: dict[str, torch.Tensor], folder: str | os.PathLike, stage: str) -> None:
    """Refuse a saved adapter that training left unusable: a weight that is NaN or infinite (the run diverged), or
    every weight as it was before training (the adapter equals the base: nothing was unlearned or learned)."""
    from safetensors.torch import load_file

    path = os.path.join(folder, "adapter_model.safetensors")
    saved = load_file(path)
    broken = sorted(name for name, tensor in saved.items() if not torch.isfinite(tensor).all())
    if broken:
        raise ValueError(
            f"{stage}: the trained adapter {path} holds NaN or infinite weights ({broken[0]}, {len(broken)} tensors): "
            "the run diverged. Lower --learning_rate or clip gradients (--max_grad_norm 1); the folder is not marked "
            "finished"
        )
    common = saved.keys() & initial.keys()
    if common and all(torch.equal(saved[name], initial[name].to(saved[name].dtype)) for name in common):
        raise ValueError(
            f"{stage}: the adapter in {folder} did not move from its initial weights: training changed nothing (no "
            "loss, or no gradient). Check the data, --learning_rate and --max_steps; the folder is not marked finished"
        )
