"""Loading what TRL's ``ModelConfig`` names: the base model (quantized if asked), its tokenizer, the LoRA config of
the adapter to train, and saved adapters under their roles' names.

The stages and the benchmarks load models only through these functions, so that ``--model_name_or_path``,
``--load_in_4bit``, ``--lora_r`` and the other ``ModelConfig`` options mean the same everywhere.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import ModelConfig, get_peft_config, get_quantization_config


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
        model_args.model_name_or_path, revision=model_args.model_revision, trust_remote_code=trust_remote_code
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(model_args: ModelConfig, trust_remote_code: bool = False):
    """The base, quantized with bitsandbytes when ``--load_in_4bit``/``--load_in_8bit`` is set."""
    return AutoModelForCausalLM.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        dtype=model_args.dtype,
        quantization_config=get_quantization_config(model_args),
        attn_implementation=model_args.attn_implementation,
        trust_remote_code=trust_remote_code,
    )


def with_adapters(base, adapters: dict[str, Path]):
    """One ``PeftModel`` holding every adapter under its role's name (the base role disables them)."""
    from peft import PeftModel

    (first, path), *others = adapters.items()
    model = PeftModel.from_pretrained(base, str(path), adapter_name=first)
    for role, path in others:
        model.load_adapter(str(path), adapter_name=role)
    return model
