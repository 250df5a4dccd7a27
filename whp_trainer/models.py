"""One base model, three roles: baseline (adapters off), reinforced (a frozen adapter) and student (the trained one).

The teacher is never a copy of the model. Teacher passes switch adapters on the shared base and restore, afterwards,
exactly the active adapter, the train/eval mode and the set of trainable parameters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import weakref
from collections.abc import Callable, Sequence

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


def base_quantization(model) -> str | None:
    """How ``model``'s weights are quantized (``"4-bit nf4 (bitsandbytes)"``, ``"8-bit (bitsandbytes)"``, or the
    quantizer's method); ``None`` for full-precision weights (a GGUF file loaded dequantized among them)."""
    config = getattr(getattr(model, "hf_quantizer", None), "quantization_config", None)
    if config is None:
        return None
    if getattr(config, "load_in_4bit", False):
        return f"4-bit {config.bnb_4bit_quant_type} (bitsandbytes)"
    if getattr(config, "load_in_8bit", False):
        return "8-bit (bitsandbytes)"
    method = getattr(config, "quant_method", "quantized")
    return str(getattr(method, "value", method))


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


ALL_LINEAR = "all-linear"  # PEFT's shorthand: every linear layer but the output layer (the LM head)


def default_lora_targets(peft_config: PeftConfig | None, model_or_type) -> tuple[PeftConfig | None, bool]:
    """``peft_config``, with every linear layer of the decoder as targets (PEFT's ``"all-linear"``, never the LM
    head) when it names no target modules and PEFT has no default for the model type; and whether that happened
    (logged, and said on the model card). ``model_or_type`` is the model or its ``config.model_type``."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    model_type = model_or_type if isinstance(model_or_type, str) else _model_type(model_or_type)
    if peft_config is None or getattr(peft_config, "target_modules", ALL_LINEAR) is not None:
        return peft_config, False
    if getattr(peft_config, "target_parameters", None):
        return peft_config, False
    tuner = PEFT_TYPE_TO_TUNER_MAPPING.get(peft_config.peft_type)
    if model_type in getattr(tuner, "target_module_mapping", {}):
        return peft_config, False
    logger.warning(
        "whp_trainer: PEFT has no default %s target modules for model type %r; training every linear layer of the "
        "decoder (%r, never the LM head). Set lora_target_modules to choose others.",
        getattr(peft_config.peft_type, "value", peft_config.peft_type), model_type, ALL_LINEAR,
    )
    return dataclasses.replace(peft_config, target_modules=ALL_LINEAR), True


def _model_type(model: torch.nn.Module) -> str | None:
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return getattr(getattr(base, "config", None), "model_type", None)


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


def final_hidden_states(
    model: PeftModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Hidden states after the decoder's last norm, i.e. what the LM head reads (``(B, T, H)``).

    The model's own forward runs (so FSDP2 or DeepSpeed ZeRO-3 gather the parameters of a sharded model through the
    hooks of its root), with the LM head skipped ([`head_input_captured`][whp_trainer.models.head_input_captured]).
    """
    with head_input_captured(model) as captured:
        own_forward(model, input_ids, attention_mask, position_ids)
    if not captured:
        raise ValueError(f"{type(model.get_base_model()).__name__} does not call its output embeddings module")
    return captured[-1]


def own_forward(model, input_ids, attention_mask, position_ids=None):
    """The model's forward on a padded batch, with the positions of its mask (left-padded rows read as unpadded)."""
    position_ids = position_ids_from_mask(attention_mask) if position_ids is None else position_ids
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)


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
    """The LM head when it is a frozen plain ``nn.Linear`` (bias or not); else ``None``."""
    head = model.get_base_model().get_output_embeddings()
    frozen = not any(parameter.requires_grad for parameter in head.parameters())
    return head if is_plain_linear(head) and frozen else None


def process_count() -> int:
    """The processes of this run's ``torch.distributed`` group (a launcher's); 1 without one."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def read_in_shares(items: Sequence, read: Callable[[list], list]) -> list:
    """``read(items)``, one result per item in order, with each process of a multi-process run reading every
    ``process_count()``-th item and all of them gathering the results: the same list in every process for a share
    of the forwards. Every process calls it with the same items; in one process it is ``read(items)``."""
    count = process_count()
    if count == 1:
        return read(list(items))
    import torch.distributed as dist

    shares = [None] * count
    dist.all_gather_object(shares, read(list(items[dist.get_rank() :: count])))
    results = [None] * len(items)
    for rank, share in enumerate(shares):
        results[rank::count] = share
    return results


def read_whole(items: Sequence, read: Callable[[list], list]) -> list:
    """``read(items)`` in this process: the metrics' default reader (`read_in_shares` is the other)."""
    return read(list(items))


def reader_for(model: torch.nn.Module) -> Callable[[Sequence, Callable[[list], list]], list]:
    """The reader every process of a run calls together to measure ``model``: `read_in_shares`, or `read_whole`
    when the model's parameters are sharded (FSDP, DeepSpeed ZeRO-3), whose every forward gathers them from every
    process, so that all of them run the same forwards."""
    return read_whole if is_sharded(model) else read_in_shares


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


# --- a role's logits ----------------------------------------------------------------------------------------------

# model type -> the factor its forward multiplies the LM head's output by (transformers' modeling files)
LOGIT_SCALES = {
    **dict.fromkeys(("cohere", "cohere2", "cohere2_moe"), lambda config: config.logit_scale),
    **dict.fromkeys(
        ("granite", "granite_swa", "granitemoe", "granitemoe_swa", "granitemoeshared", "granitemoehybrid"),
        lambda config: 1 / config.logits_scaling,
    ),
    "falcon_h1": lambda config: config.lm_head_multiplier,
    "hyperclovax": lambda config: config.logits_scaling,
}
CHECKED_POSITIONS = 8  # positions compared between the model's forward and the rebuilt logits


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    """How a causal LM turns its LM head's output ``z`` into its logits: ``z · scale``, then soft-capped as
    ``softcap · tanh(· / softcap)`` when ``softcap`` is set (Gemma 2/3). ``rebuilds``: whether whp_trainer rebuilds
    the logits so from the final hidden states (chunk by chunk), or, where that does not give the model's own logits,
    takes them whole from the model's forward."""

    scale: float = 1.0
    softcap: float | None = None
    rebuilds: bool = True

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def head_spec(config) -> HeadSpec:
    """The post-processing after the LM head that the model of ``config`` is known to apply (not yet checked)."""
    scale = LOGIT_SCALES.get(getattr(config, "model_type", None))
    return HeadSpec(
        scale=1.0 if scale is None else float(scale(config)),
        softcap=getattr(config, "final_logit_softcapping", None) or None,
    )


_HEADS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # base model -> its checked HeadSpec


def logits_head(model: PeftModel) -> HeadSpec:
    """The model's checked [`HeadSpec`][whp_trainer.models.HeadSpec], found once per base model
    ([`verify_logits_rebuild`][whp_trainer.models.verify_logits_rebuild])."""
    base = model.get_base_model()
    if base not in _HEADS:
        _HEADS[base] = verify_logits_rebuild(model)
    return _HEADS[base]


def verify_logits_rebuild(model: PeftModel) -> HeadSpec:
    """The model's [`head_spec`][whp_trainer.models.head_spec] when logits rebuilt with it from the final hidden states
    equal the model's own forward's on a few positions (baseline role); else one that takes the model's own logits,
    with a warning naming the architecture: rebuilt logits are never used unchecked."""
    spec = head_spec(model.config)
    embeddings = model.get_input_embeddings()  # its num_embeddings, not len(weight): ZeRO-3 leaves weights empty
    ids = torch.linspace(0, embeddings.num_embeddings - 1, CHECKED_POSITIONS, device=embeddings.weight.device)
    ids = ids.long()[None]
    mask = torch.ones_like(ids)
    with using_adapter(model, BASELINE):
        own = own_forward(model, ids, mask).logits
        try:
            hidden = final_hidden_states(model, ids, mask)
        except ValueError as error:
            return _own_logits_instead(model, spec, str(error))
        with gathered(model, model.get_base_model().get_output_embeddings()):
            rebuilt = logits_from_states(model, hidden, spec)
    tolerance = 8 * max(torch.finfo(own.dtype).eps, 1e-5)
    difference = (rebuilt - own.float()).abs().max().item()
    if difference > tolerance * (1 + own.float().abs().max().item()):
        return _own_logits_instead(model, spec, f"rebuilt logits differ from its own by up to {difference:.3g}")
    return spec


def _own_logits_instead(model: PeftModel, spec: HeadSpec, reason: str) -> HeadSpec:
    logger.warning(
        "whp_trainer: %s (model type %r) post-processes its LM head's output in a way whp_trainer does not rebuild "
        "(%s, with scale %g and soft cap %s); using the model's own logits instead: correct, but whole B×T×V logits "
        "per teacher pass and no chunked student loss (more memory)",
        type(model.get_base_model()).__name__, getattr(model.config, "model_type", None), reason, spec.scale,
        spec.softcap,
    )
    return dataclasses.replace(spec, rebuilds=False)


def final_states(
    model: PeftModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, head: HeadSpec,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """What [`logits_from_states`][whp_trainer.models.logits_from_states] turns into the active role's logits, per
    position: the final hidden states ``(B, T, H)``, or, where ``head`` does not rebuild, the model's own logits
    ``(B, T, V)`` (float32)."""
    if head.rebuilds:
        return final_hidden_states(model, input_ids, attention_mask, position_ids)
    return own_forward(model, input_ids, attention_mask, position_ids).logits.float()


def logits_from_states(model: PeftModel, states: torch.Tensor, head: HeadSpec) -> torch.Tensor:
    """The logits (float32) of [`final_states`][whp_trainer.models.final_states]: the LM head and its post-processing
    applied to final hidden states (the states themselves where ``head`` does not rebuild).

    A plain ``nn.Linear`` head is applied through its weight, not its call, so that no FSDP2 or ZeRO-3 hook runs per
    chunk: on a sharded model, gather it once around all chunks with [`gathered`][whp_trainer.models.gathered].
    """
    if not head.rebuilds:
        return states.float()
    module = model.get_base_model().get_output_embeddings()
    if is_plain_linear(module):  # in the head's dtype, as its call under autocast: adapters can leave states float32
        logits = F.linear(states.to(module.weight.dtype), module.weight, module.bias)
    else:
        logits = module(states)
    return head.apply(logits.float())


def role_logits(
    model: PeftModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, adapter: str | None = BASELINE,
    position_ids: torch.Tensor | None = None, logits_to_keep: int = 0,
) -> torch.Tensor:
    """Logits ``(B, T, V)`` (the last ``logits_to_keep`` positions, if set) of one role, float32 and without grad:
    the model's own ``model(...).logits`` of that role, by the path the trainer's teacher passes take."""
    head = logits_head(model)
    with using_adapter(model, adapter):
        states = final_states(model, input_ids, attention_mask, head, position_ids)
        states = states[:, -logits_to_keep:] if logits_to_keep else states
        output_embeddings = model.get_base_model().get_output_embeddings()
        with gathered(model, output_embeddings) if head.rebuilds else contextlib.nullcontext():
            return logits_from_states(model, states, head)

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
