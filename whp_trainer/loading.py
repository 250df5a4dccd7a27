"""Loading what TRL's ``ModelConfig`` names (with ``gguf_file``: `ModelArguments`): the base model (quantized if
asked), its tokenizer, the LoRA config of the adapter to train, and saved adapters under their roles' names.

The stages and the benchmarks load models only through these functions, so that ``--model_name_or_path``,
``--gguf_file``, ``--load_in_4bit``, ``--lora_r`` and the other ``ModelConfig`` options mean the same everywhere.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import ModelConfig, get_peft_config, get_quantization_config

from .models import guard_cpu_4bit


@dataclass
class ModelArguments(ModelConfig):
    """TRL's ``ModelConfig``, and the GGUF file to load, as transformers' ``from_pretrained(..., gguf_file=...)``."""

    gguf_file: str | None = field(
        default=None,
        metadata={"help": "A GGUF file in --model_name_or_path (a folder or a Hub repo) to load the model and its "
                  "tokenizer from, dequantized (needs the gguf package), e.g. SmolLM2-135M-Instruct.Q4_1.gguf."},
    )


def gguf_file_of(model_args) -> str | None:
    """The GGUF file ``model_args`` names (TRL's own ``ModelConfig`` has none)."""
    return getattr(model_args, "gguf_file", None)


def naming(model_args, path) -> ModelArguments:
    """``model_args`` naming another model (an oracle) at its main revision: a folder or Hub id, or a ``.gguf`` file
    (its folder and name)."""
    path = Path(path)
    gguf_file = path.name if path.suffix == ".gguf" else None
    fields = {field.name: getattr(model_args, field.name) for field in dataclasses.fields(ModelConfig)}
    return ModelArguments(**{**fields, "model_name_or_path": str(path.parent if gguf_file else path),
                             "model_revision": "main", "gguf_file": gguf_file})


def lora_config(model_args: ModelConfig):
    """The LoRA config of TRL's ``ModelConfig`` options (``--lora_r`` …); always on, as every stage trains LoRA.

    ``ModelConfig`` turns a one-module list into a plain string, which PEFT would read as a regular expression of
    the full module name: one module name stays a list here.
    """
    config = get_peft_config(dataclasses.replace(model_args, use_peft=True))
    if isinstance(config.target_modules, str) and config.target_modules != "all-linear":
        config.target_modules = {config.target_modules}
    return config


def load_tokenizer(model_args: ModelConfig, trust_remote_code: bool = False):
    """The base's tokenizer, with the EOS token as pad token when it has none."""
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.model_name_or_path, revision=model_args.model_revision, trust_remote_code=trust_remote_code,
        gguf_file=gguf_file_of(model_args),
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(model_args: ModelConfig, trust_remote_code: bool = False):
    """The base, quantized with bitsandbytes when ``--load_in_4bit``/``--load_in_8bit`` is set (its 4-bit layers
    guarded: `models.guard_cpu_4bit`); from ``--gguf_file`` dequantized into a plain model (float32 unless
    ``--dtype``)."""
    gguf_file = gguf_file_of(model_args)
    model = AutoModelForCausalLM.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        dtype="float32" if gguf_file and model_args.dtype in (None, "auto") else model_args.dtype,
        quantization_config=get_quantization_config(model_args),
        attn_implementation=model_args.attn_implementation,
        trust_remote_code=trust_remote_code,
        gguf_file=gguf_file,
    )
    guard_cpu_4bit(model)  # the stages' first forwards (sweeps, evaluations) run in eval mode without grad
    return without_gguf_quantizer(model) if gguf_file else model


def without_gguf_quantizer(model):
    """A model loaded from a GGUF file holds dequantized weights but keeps the GGUF quantizer, with which the Trainer
    refuses to train it and ``save_pretrained`` to save it: take the quantizer off (transformers' own
    ``remove_quantization_config``), and it trains, saves and merges as a plain model."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    for module in model.modules():
        if getattr(getattr(module, "config", None), "_is_quantized", False):
            module.config._is_quantized = False
    return model


def with_adapters(base, adapters: dict[str, Path]):
    """One ``PeftModel`` holding every adapter under its role's name (the base role disables them)."""
    from peft import PeftModel

    (first, path), *others = adapters.items()
    model = PeftModel.from_pretrained(base, str(path), adapter_name=first)
    for role, path in others:
        model.load_adapter(str(path), adapter_name=role)
    return model
