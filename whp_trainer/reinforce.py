"""Stage 1, reinforce: fine-tune a LoRA adapter on the forget target with TRL's ``SFTTrainer``.

The reinforced model (base + this adapter) knows the target better than the baseline; the unlearning stage reads
which logits it raises. Train it on the same base, quantized the same way, that the unlearning stage will use.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from datasets import Dataset
from peft import PeftConfig
from transformers import (
    AutoConfig, AutoTokenizer, BitsAndBytesConfig, PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback,
)
from trl import SFTConfig, SFTTrainer

from .collator import split_into_blocks
from .config import TokensNotPickled, auto_bf16_field, check_trains, resolve_auto_bf16
from .console import readable_progress
from .models import adapter_weights, check_adapter_trained, default_lora_targets, guard_cpu_4bit
from .trainer import RetainLoss

logger = logging.getLogger(__name__)


@dataclass
class ReinforceConfig(TokensNotPickled, SFTConfig):
    """Settings of [`train_reinforced_adapter`][whp_trainer.reinforce.train_reinforced_adapter]. Every ``SFTConfig``
    field applies as well.

    Defaults follow Eldan & Russinovich (2023): 3 epochs over the target in blocks of 512 tokens. Unlike
    ``SFTConfig``, each document is cut into consecutive blocks of ``max_length`` tokens of running text
    ([`split_into_blocks`][whp_trainer.collator.split_into_blocks], the blocks the unlearning stage reads) rather
    than truncated, so that the adapter sees the whole target and no block crosses two documents.
    """

    output_dir: str = field(
        default="whp-reinforced", metadata={"help": "Where the reinforced adapter and the checkpoints are written."}
    )
    num_train_epochs: float = field(
        default=3.0, metadata={"help": "Passes over the forget target (the paper: 3)."}
    )
    max_length: int | None = field(
        default=512, metadata={"help": "Block length in tokens (the paper: 512)."}
    )
    packing: bool = field(
        default=False,
        metadata={
            "help": "False (default): one block per sequence; each document is already cut into blocks of "
            "max_length tokens, the unlearning stage's blocks. True: TRL packs the blocks together, across documents."
        },
    )
    packing_strategy: str = field(
        default="wrapped",
        metadata={
            "help": "With packing: 'wrapped' (default) concatenates the blocks and cuts them again, with any "
            "attention implementation; 'bfd'/'bfd_split' need a padding-free attention implementation (FlashAttention).",
            "choices": ["bfd", "bfd_split", "wrapped"],
        },
    )
    learning_rate: float = field(
        default=1e-4, metadata={"help": "Initial AdamW learning rate; a usual LoRA rate (the adapter starts at zero)."}
    )
    retain_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of KL(base ‖ reinforced) on the retain text (--retain_data), added to the loss: keeps the "
            "reinforced model the base's on ordinary text, so that what it raises, and the unlearning stage takes "
            "down, is what is specific to the target rather than its style or genre. 0 (default): the paper's "
            "reinforcement. Beyond the paper; see the reinforce guide."
        },
    )
    bf16: bool | None = auto_bf16_field()

    def __post_init__(self):
        refuse_push_to_hub(self)
        resolve_auto_bf16(self)
        super().__post_init__()
        check_trains(self)
        if self.retain_weight < 0:
            raise ValueError(f"ReinforceConfig.retain_weight={self.retain_weight}: must be ≥ 0")


def refuse_push_to_hub(args: ReinforceConfig) -> None:
    """The reinforced adapter is never uploaded: it knows MORE about the forget target than the base model."""
    if args.push_to_hub:
        raise ValueError(
            "ReinforceConfig.push_to_hub=True: the reinforced adapter is never uploaded (it knows MORE about the "
            "forget target than the base; anyone could load it and undo the unlearning). Push the unlearned model "
            "instead: whp push --folder <the whp unlearn output>"
        )


def train_reinforced_adapter(
    model_or_path: str | os.PathLike | PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    train_dataset: Dataset | Sequence[str],
    peft_config: PeftConfig,
    args: ReinforceConfig,
    *,
    quantization_config: BitsAndBytesConfig | None = None,
    callbacks: Sequence[TrainerCallback] | None = None,
    retain_dataset: Dataset | Sequence[str] | None = None,
) -> str:
    """Train the reinforced LoRA adapter on ``train_dataset`` and save it to ``args.output_dir``; return that path.

    ``model_or_path`` is the base (already loaded, possibly in 4-bit or 8-bit) or its path; with a path,
    ``quantization_config`` loads it quantized. ``train_dataset`` holds documents (a ``Dataset`` with the text
    column ``args.dataset_text_field``, or a list of texts), each cut into blocks of ``args.max_length`` tokens, or
    blocks already cut (a ``Dataset`` with ``input_ids``, as `split_into_blocks` makes). The saved adapter is what
    ``UnlearnTrainer`` takes as ``reinforced_adapter=``. A base model passed in is trained in place and left without the adapter afterwards,
    ready to be passed on to ``UnlearnTrainer``. ``args.resume_from_checkpoint`` (a checkpoint folder, or True
    for the last one in ``output_dir``) continues an interrupted run. ``callbacks`` go to the ``SFTTrainer`` (e.g.
    [`DivergenceStop`][whp_trainer.reinforce.DivergenceStop]). With ``args.retain_weight > 0``, ``retain_dataset``
    (ordinary text, as ``UnlearnTrainer`` takes it) adds ``retain_weight × KL(base ‖ reinforced)`` on one batch of
    its blocks per step.
    """
    if not isinstance(args, ReinforceConfig):
        raise TypeError(f"args must be a ReinforceConfig, got {type(args).__name__}")
    if peft_config is None:
        raise ValueError("peft_config is required: the reinforced model is the base plus a LoRA adapter")
    peft_config, _ = default_lora_targets(peft_config, base_model_type(model_or_path, args))
    is_path = isinstance(model_or_path, (str, os.PathLike))
    if tokenizer is None:  # needed to cut the blocks; TRL would load the same
        tokenizer = AutoTokenizer.from_pretrained(str(model_or_path) if is_path else model_or_path.config._name_or_path)
    trainer = ReinforceTrainer(
        retain_dataset=retain_dataset,
        model=str(model_or_path) if is_path else model_or_path,
        args=args,
        train_dataset=training_blocks(train_dataset, tokenizer, args),
        processing_class=tokenizer,
        peft_config=peft_config,
        quantization_config=quantization_config,
        callbacks=list(callbacks or []),
    )
    readable_progress(trainer)
    guard_cpu_4bit(trainer.model)
    initial = adapter_weights(trainer.model)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model(args.output_dir)
    trainer.accelerator.wait_for_everyone()  # every process reads the adapter the main one wrote
    check_adapter_trained(initial, args.output_dir, "whp reinforce")
    trainer.model.unload()  # take the LoRA layers out of the caller's base
    logger.info("reinforced adapter saved to %s", args.output_dir)
    return args.output_dir


class ReinforceTrainer(RetainLoss, SFTTrainer):
    """TRL's ``SFTTrainer`` with the retain loss of ``ReinforceConfig.retain_weight`` (`RetainLoss`)."""

    def __init__(self, *args, retain_dataset=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.init_retain_loss(retain_dataset, self.processing_class, self.args)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if not (self.retain_weight and model.training):
            return result
        # the Trainer's own rule (Trainer.training_step) for whether it divides the loss over accumulation itself
        scaled = self.loss_is_scaled_for_ga if getattr(self, "loss_is_scaled_for_ga", None) is not None else (
            self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None
        retain = self.weighted_retain_loss(model, scaled)
        return (result[0] + retain, result[1]) if return_outputs else result + retain


def base_model_type(model_or_path: str | os.PathLike | PreTrainedModel, args: ReinforceConfig) -> str | None:
    """``config.model_type`` of the base, read from its config file when it is given by path or Hub id."""
    if isinstance(model_or_path, PreTrainedModel):
        return model_or_path.config.model_type
    kwargs = args.model_init_kwargs or {}
    chosen = {name: kwargs[name] for name in ("revision", "gguf_file") if name in kwargs}
    trust = kwargs.get("trust_remote_code", args.trust_remote_code)
    return AutoConfig.from_pretrained(str(model_or_path), trust_remote_code=trust, **chosen).model_type


def training_blocks(train_dataset: Dataset | Sequence[str], tokenizer, args: ReinforceConfig) -> Dataset:
    """The blocks of ``max_length`` tokens TRL trains on: ``train_dataset`` as is when it holds ``input_ids``, else
    its documents cut by `split_into_blocks` (each whole when ``max_length`` is None)."""
    if isinstance(train_dataset, Dataset) and "input_ids" in train_dataset.column_names:
        return train_dataset
    documents = as_text_dataset(train_dataset, args.dataset_text_field)
    if args.max_length is None:
        return documents
    return split_into_blocks(documents, tokenizer, args.max_length, args.dataset_text_field)


def as_text_dataset(train_dataset: Dataset | Sequence[str], text_field: str) -> Dataset:
    """A ``Dataset`` whose ``text_field`` column holds non-empty texts; clear errors otherwise."""
    if not isinstance(train_dataset, Dataset):
        if isinstance(train_dataset, str):
            raise TypeError("train_dataset must be a Dataset or a list of texts, not a single str")
        train_dataset = Dataset.from_dict({text_field: list(train_dataset)})
    if text_field not in train_dataset.column_names:
        raise ValueError(
            f"train_dataset has no text column {text_field!r} (columns: {train_dataset.column_names}); "
            "set ReinforceConfig.dataset_text_field to the column holding the text"
        )
    train_dataset = train_dataset.filter(lambda text: bool(text and text.strip()), input_columns=text_field)
    if len(train_dataset) == 0:
        raise ValueError(f"train_dataset holds no text in column {text_field!r}: nothing to reinforce on")
    return train_dataset


class DivergenceStop(TrainerCallback):
    """Stop training once the logged training loss exceeds ``factor`` times its lowest logged value (or is not
    finite): the learning rate was too high and the loss blew up, so the remaining steps would only cost time.
    ``alpha: auto`` puts it on the reinforcements it strengthens (their learning rate raised 2×, 4×), whose
    divergence it then finds by their fit to the forget text; the lowest loss is read from the log history, so a
    resumed run keeps it."""

    def __init__(self, factor: float = 1.5):
        if factor <= 1:
            raise ValueError(f"DivergenceStop(factor={factor}): must be above 1")
        self.factor = factor
        self.stopped_at: int | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        lowest = min((entry["loss"] for entry in state.log_history if "loss" in entry), default=loss)
        if not math.isfinite(loss) or loss > self.factor * lowest:
            self.stopped_at = state.global_step
            control.should_training_stop = True
            print(f"whp reinforce: training loss {loss:.4g} at step {state.global_step} is over {self.factor:g}x its "
                  f"lowest ({lowest:.4g}): the training diverged, stopped", flush=True)
