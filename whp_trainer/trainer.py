"""``UnlearnTrainer``: a ``transformers.Trainer`` that computes the generic targets on the fly.

Each step: two teacher passes under ``no_grad`` on the shared base (baseline: adapters disabled, reading the
translated block; reinforced: the frozen reinforced adapter, reading the original block), the generic logits of
[`whp_trainer.targets`][whp_trainer.targets] computed chunk by chunk at the loss positions only, then the student (the
trainable unlearning adapter) on the original block, trained towards those targets.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import logging
import os
from collections import defaultdict
from pathlib import Path
from unittest import mock

import torch
import transformers.trainer
from datasets import Dataset
from huggingface_hub import get_token
from torch import nn
from transformers import AutoTokenizer, Trainer
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, enable_full_determinism, set_seed

from .anchors import AnchorDictionary
from .batching import pad_to_width, position_ids_from_mask
from .cache import CachedTargetsCollator, with_cached_targets
from .collator import (
    AnchorSwapCollator,
    check_anchor_coverage,
    check_loss_positions,
    collator_for,
    split_into_blocks,
    translations_in,
    validate_batch,
    with_shift_labels,
)
from .config import UnlearnConfig
from .console import readable_progress
from .loading import without_gguf_quantizer
from .models import (
    BASELINE,
    base_quantization,
    default_lora_targets,
    final_states,
    gathered,
    has_adapter,
    head_input_captured,
    is_sharded,
    logits_from_states,
    logits_head,
    plain_linear_head,
    prepare_unlearning_model,
    process_count,
    using_adapter,
)
from .hub import content_excluded, local_only_patterns, tracker_urls, write_model_card
from .runs import adapter_file_fingerprints, last_complete_checkpoint, record_reinforced_adapter
from .targets import (
    IGNORE_INDEX,
    averaged_targets,
    cap_level,
    chunked_distillation_loss,
    commonest_tokens,
    distillation_loss,
    drop_unchanged,
    generic_logits,
    original_token_cap,
    retain_kl,
    suppress,
    without_conflict,
)

logger = logging.getLogger(__name__)

RETAIN_STATE = "UnlearnTrainer.retain_batches"  # its entry in a checkpoint's trainer_state.json (retain batches
# served and the loss weights in use; the name is older than the weights)
CHUNK_ELEMENTS = 2**25  # default chunk: 128 MiB of float32 teacher logits; smaller chunks re-read the LM head too often


class RetainLoss:
    """Mixin for a ``Trainer`` of a ``PeftModel``: ``retain_weight`` × a loss on seeded batches of retain blocks
    (ordinary text to keep), resumed exactly from a checkpoint. ``UnlearnTrainer`` keeps the student the base's there;
    the reinforcement ([`whp_trainer.reinforce`][whp_trainer.reinforce]) keeps the reinforced model the base's."""

    def init_retain_loss(self, retain_dataset, tokenizer, args) -> None:
        self.retain_blocks = retain_token_blocks(retain_dataset, tokenizer, args)
        self._retain_served = 0  # retain batches served so far; saved in every checkpoint (see _save_checkpoint)
        self.retain_weight = args.retain_weight  # alpha auto's stopping rule raises it when a budget is over
        self._retain_pass: tuple[int, list[int]] = (-1, [])  # the pass over the retain blocks in use, its order

    def weighted_retain_loss(self, model, loss_is_scaled_for_ga: bool = True) -> torch.Tensor:
        """``retain_weight`` × `retain_loss`, shared over gradient accumulation as the main loss is: divided here
        when the Trainer leaves the main loss undivided (``loss_is_scaled_for_ga``), else by the Trainer."""
        steps = self.args.gradient_accumulation_steps if loss_is_scaled_for_ga else 1
        return self.retain_weight * self.retain_loss(model) / steps

    def retain_loss(self, model, kind: str | None = None) -> torch.Tensor:
        """The loss on the next batch of retain blocks (cycled in a seeded order): ``KL(base ‖ model)`` of the
        next-token distributions (``kind="kl"``) or the language-modelling loss (``"nll"``); ``kind`` defaults to
        ``args.retain_loss``."""
        batch = self._next_retain_batch()
        ids, mask = batch["input_ids"].to(self.args.device), batch["attention_mask"].to(self.args.device)
        inputs = dict(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False)
        logits = model(**inputs).logits[:, :-1]
        labels = batch["shift_labels"].to(ids.device)[:, :-1]
        mask = (labels != IGNORE_INDEX).float()
        positions = positions_per_process(mask.sum().clamp(min=1))
        if (kind or getattr(self.args, "retain_loss", "kl")) == "nll":
            return nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(),
                                               ignore_index=IGNORE_INDEX, reduction="sum") / positions
        peft_model = self.accelerator.unwrap_model(model)
        with using_adapter(peft_model, BASELINE):
            baseline = peft_model(**inputs).logits[:, :-1]
        return retain_kl(logits, baseline, mask, positions)

    def _next_retain_batch(self) -> dict[str, torch.Tensor]:
        """This process's share of batch number ``_retain_served`` of the retain blocks: the batches of all processes
        together are consecutive slices of their passes, pass ``p`` in the order ``randperm(seed + p)``; a function
        of the count alone, so a resumed run continues it exactly, and several processes read what one process of
        their global batch would (each its own blocks; DDP averages their gradients)."""
        size = self.args.per_device_train_batch_size
        start = (self._retain_served * self.args.world_size + self.args.process_index) * size
        self._retain_served += 1
        chosen = [self._retain_block_index(position) for position in range(start, start + size)]
        collator = AnchorSwapCollator(self.processing_class, None, max_length=self.args.max_length)
        return collator([{"input_ids": self.retain_blocks[index]} for index in chosen])

    def _retain_block_index(self, position: int) -> int:
        """The retain block at ``position`` of the endless sequence of passes over them."""
        number, offset = divmod(position, len(self.retain_blocks))
        if self._retain_pass[0] != number:
            generator = torch.Generator().manual_seed(self.args.seed + number)
            self._retain_pass = (number, torch.randperm(len(self.retain_blocks), generator=generator).tolist())
        return self._retain_pass[1][offset]

    def _save_checkpoint(self, model, trial) -> None:
        """A checkpoint also holds `_checkpoint_attributes` (in ``trainer_state.json``, which the Trainer writes
        last)."""
        self.state.stateful_callbacks[RETAIN_STATE] = {"args": {}, "attributes": self._checkpoint_attributes()}
        super()._save_checkpoint(model, trial)

    def _load_callback_state(self) -> None:
        """On resume: `_restore_attributes` from the checkpoint's state (before the Trainer reads its callbacks)."""
        saved = self.state.stateful_callbacks.pop(RETAIN_STATE, None)
        self._restore_attributes(saved["attributes"] if saved else {})
        super()._load_callback_state()

    def _checkpoint_attributes(self) -> dict:
        """What a resumed run takes up besides the Trainer's state: the retain batches served, and the retain weight
        in use (alpha auto's stopping rule raises it)."""
        return {"batches_served": self._retain_served, "retain_weight": self.retain_weight}

    def _restore_attributes(self, saved: dict) -> None:
        """Take up `_checkpoint_attributes` (those a checkpoint lacks start as configured)."""
        self._retain_served = saved.get("batches_served", 0)
        self.retain_weight = saved.get("retain_weight", self.args.retain_weight)


class UnlearnTrainer(RetainLoss, Trainer):
    """Drop-in ``Trainer`` for Who's Harry Potter unlearning.

    Args:
        model: a base model, or a ``PeftModel`` already holding the reinforced adapter (under
            ``args.reinforced_adapter_name``) and/or the unlearning adapter (under ``args.unlearn_adapter_name``);
            or, as TRL's trainers accept, a Hub id or path loaded with ``args.model_init_kwargs`` (dtype,
            quantization_config, …) and ``args.trust_remote_code``. Its tokenizer is loaded too when
            ``processing_class`` is not given.
        args: an [`UnlearnConfig`][whp_trainer.UnlearnConfig].
        reinforced_adapter: path or Hub id of the reinforced adapter to load (frozen) onto the same base.
            Without one, and none on the model, the targets come from the anchors only (an ablation).
        peft_config: the unlearning adapter to add and train, when the model does not hold it yet.
        anchors: an ``AnchorDictionary`` (or a path to one) used to build the default ``AnchorSwapCollator``.
            Without anchors (and no translating collator) the baseline reads the original text (bootstrapping only).
        retain_dataset: ordinary text to keep (a list of strings, or a ``Dataset`` with ``input_ids`` or a text
            column): with ``args.retain_weight > 0`` one batch of its blocks per step adds the retain loss.
    """

    _tag_names = ["whp_trainer", "unlearning"]

    def __init__(
        self,
        model: nn.Module | str,
        args: UnlearnConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        reinforced_adapter: str | os.PathLike | None = None,
        peft_config=None,
        anchors=None,
        retain_dataset=None,
        **kwargs,
    ):
        args = args if args is not None else UnlearnConfig(output_dir="whp-unlearned")
        if not isinstance(args, UnlearnConfig):
            raise TypeError(f"args must be an UnlearnConfig, got {type(args).__name__}")
        if args.auto:
            raise ValueError("UnlearnConfig.alpha='auto' is resolved by whp unlearn / whp run (the teacher sweep, "
                             "whp_trainer.pipeline.unlearn); UnlearnTrainer needs a number")
        anchors = _load_anchors(anchors)
        # the Trainer seeds in its __init__, after the unlearning adapter below is initialised: seed before it
        enable_full_determinism(args.seed) if args.full_determinism else set_seed(args.seed)
        if isinstance(model, str):
            model, processing_class = _model_from_id(model, args, processing_class)
        elif args.model_init_kwargs is not None:
            logger.warning("UnlearnConfig.model_init_kwargs is ignored: the model is already loaded")
        check_vocabulary(model, processing_class)
        self.init_retain_loss(retain_dataset, processing_class, args)
        self.spared_tokens = commonest_tokens(self.retain_blocks or [], args.spare_common_tokens)
        self.cap_weight = args.original_cap_weight  # alpha auto's stopping rule drops it when a budget is over
        peft_config, self.all_linear_lora = default_lora_targets(peft_config, model)
        model = prepare_unlearning_model(
            model, peft_config, reinforced_adapter, args.unlearn_adapter_name, args.reinforced_adapter_name
        )
        if not (is_sharded(model) or any(parameter.is_meta for parameter in model.parameters())):
            logits_head(model)  # checked now; a model sharded at load is checked at its first step
        if data_collator is None:
            data_collator = collator_for(processing_class, anchors, args)
        self.anchors = anchors if anchors is not None else getattr(data_collator, "anchors", None)
        if self.anchors is not None:
            check_anchor_coverage(data_collator, train_dataset)
        if train_dataset is not None:
            check_loss_positions(data_collator, train_dataset)
        self.reinforced_adapter = reinforced_adapter
        self.has_reinforced = has_adapter(model, args.reinforced_adapter_name)
        if not self.has_reinforced and self.anchors is None:
            raise ValueError(
                "neither a reinforced adapter nor anchors: the generic targets would equal the baseline's own "
                "predictions. Pass reinforced_adapter=..., anchors=..., or both."
            )
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self.dataset_description: str | None = None  # shown on the model card
        self.dataset_ids: list[str] | None = None  # Hub ids of the training data: the card's `datasets` metadata
        self.eval_results: dict[str, dict[str, float]] | None = None  # role -> metrics, for the model card
        self.auto_choice: dict | None = None  # alpha auto: what was chosen and why, for the run record and the card
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        # Our loss is normalised by `num_items_in_batch` (counted below over the accumulated batch, gathered
        # across processes by the Trainer), so gradient accumulation needs no further scaling.
        self.model_accepts_loss_kwargs = True
        self.loss_is_scaled_for_ga = True
        for option in ("sam_rho", "retain_projection"):
            if getattr(args, option) and (self.is_deepspeed_enabled or self.is_fsdp_enabled):
                raise ValueError(f"UnlearnConfig.{option} needs each process's whole gradients between its passes: "
                                 "not with DeepSpeed or FSDP (their gradients are sharded); use DDP or one process")
        readable_progress(self)
        logger.info("whp_trainer: %s", self.method_variant)

    @property
    def method_variant(self) -> str:
        """Which variant of the method runs: the full method or one of the paper's ablations."""
        if self.has_reinforced and self.anchors is not None:
            return "full method (reinforced adapter + anchored terms)"
        if self.has_reinforced:
            return "ablation: reinforced bootstrapping only (no anchor dictionary; the baseline reads the original text)"
        return "ablation: anchored terms only (no reinforced adapter; targets are the baseline on the translated text)"

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device):
        # The Trainer counts loss positions only when a batch has "labels"; ours are in "shift_labels".
        shifted = [with_shift_labels(batch)["shift_labels"] for batch in batch_samples]
        counted = [{"labels": labels, "shift_labels": labels} for labels in shifted]
        return super()._get_num_items_in_batch(counted, device)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if resume_from_checkpoint is True:  # the Trainer would take the newest checkpoint, even one cut short by a kill
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"resume_from_checkpoint=True but {self.args.output_dir} holds no complete checkpoint")
        if self.args.cache_targets and not isinstance(self.data_collator, CachedTargetsCollator):
            self._refuse_cache_of_sharded_model()
            if not isinstance(self.train_dataset, Dataset):
                raise TypeError("UnlearnConfig.cache_targets needs train_dataset to be a datasets.Dataset")
            with self.args.main_process_first(desc="whp target cache"):
                batch_size = self.args.per_device_train_batch_size
                self.train_dataset = with_cached_targets(self, self.train_dataset, batch_size)
            self.data_collator = CachedTargetsCollator(self.data_collator)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _prepare_inputs(self, inputs):
        """Batches of the standard ``input_ids``/``attention_mask``(/``labels``) format get their ``shift_labels``."""
        return with_shift_labels(super()._prepare_inputs(inputs))

    def _refuse_cache_of_sharded_model(self) -> None:
        """The cache is computed by the main process alone, before the model is prepared: it needs every parameter
        whole there, which ZeRO-3 (partitioned at load), a model sharded beforehand, and FSDP's low-memory loading
        (parameters on the meta device outside the main process) do not give."""
        model = self.accelerator.unwrap_model(self.model)
        if is_deepspeed_zero3_enabled() or is_sharded(model) or any(p.is_meta for p in model.parameters()):
            raise ValueError(
                "UnlearnConfig.cache_targets needs the whole model in every process before training; it is not "
                "supported with DeepSpeed ZeRO-3, a model already sharded (fully_shard), or FSDP's "
                "cpu_ram_efficient_loading. Set cache_targets=False, or use DDP, ZeRO-2, or FSDP with "
                "cpu_ram_efficient_loading off."
            )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        validate_batch(inputs, expects_translation=self.anchors is not None)
        rows, cols = (inputs["shift_labels"] != IGNORE_INDEX).nonzero(as_tuple=True)
        peft_model = self.accelerator.unwrap_model(model)
        if "cached_target_ids" in inputs:
            targets = self._cached_targets(inputs, rows, cols)
        else:
            targets = self._generic_targets(peft_model, inputs, rows, cols)
        if self.args.skip_unchanged_targets and not targets.is_floating_point():
            targets = drop_unchanged(targets, inputs["shift_labels"])
        level = self._cap_level(peft_model, inputs, targets, rows, cols)
        chunked = self.args.chunked_student_loss and logits_head(peft_model).rebuilds
        head = plain_linear_head(peft_model) if chunked else None
        if head is None:
            loss, outputs, original_log_probs = self._student_loss(
                model, inputs, targets, rows, cols, num_items_in_batch, level
            )
        else:
            loss, outputs, original_log_probs = self._chunked_student_loss(
                model, head, inputs, targets, rows, cols, num_items_in_batch, level
            )
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients; the count is global
        if self.retain_weight and model.training:
            loss = loss + self.weighted_retain_loss(model)
        top = targets.argmax(-1) if targets.is_floating_point() else targets[rows, cols]
        self._record_metrics(top, inputs["shift_labels"][rows, cols], original_log_probs)
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.args.sam_rho:
            return self._sharpness_aware_step(model, inputs, num_items_in_batch)
        if self.args.retain_projection:
            return self._projected_step(model, inputs, num_items_in_batch)
        return super().training_step(model, inputs, num_items_in_batch)

    def _projected_step(self, model, inputs, num_items_in_batch):
        """``args.retain_projection``: this micro-batch's forget gradient less its component along the language-
        modelling gradient of one more retain batch where the two conflict (`without_conflict`), plus the weighted
        retain loss's gradient, added to the gradients accumulated so far."""
        parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
        accumulated = taken_gradients(parameters)
        weight, self.retain_weight = self.retain_weight, 0.0
        with self.accelerator.no_sync(model):  # several processes: each part averaged over them below
            try:
                loss = super().training_step(model, inputs, num_items_in_batch)
            finally:
                self.retain_weight = weight
            forget = averaged_over_processes(parameters, taken_gradients(parameters))
            with self.compute_loss_context_manager():
                direction = self.retain_loss(model, "nll")
            direction.backward()  # not autograd.grad, which reentrant gradient checkpointing refuses
            forget = without_conflict(forget, averaged_over_processes(parameters, taken_gradients(parameters)))
            with self.compute_loss_context_manager():
                retain = self.weighted_retain_loss(model)
            self.accelerator.backward(retain)
        add_gradients(parameters, averaged_over_processes(parameters, taken_gradients(parameters)))
        add_gradients(parameters, forget)
        add_gradients(parameters, accumulated)
        return loss + retain.detach()

    def _sharpness_aware_step(self, model, inputs, num_items_in_batch):
        """SAM (``args.sam_rho``): this micro-batch's gradient taken at ``w + ρ·g/‖g‖`` (``g``: its gradient at
        ``w``), with the same retain batch, added to the gradients accumulated so far; the weights stay ``w``."""
        parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
        accumulated = taken_gradients(parameters)
        served = self._retain_served
        with self.accelerator.no_sync(model):  # several processes: each pass's gradient averaged over them below
            super().training_step(model, inputs, num_items_in_batch)
            gradients = averaged_over_processes(parameters, taken_gradients(parameters))
            norm = torch.sqrt(sum(gradient.float().square().sum() for gradient in gradients if gradient is not None))
            scale = self.args.sam_rho / (norm + 1e-12)
            moves = [None if gradient is None else (gradient * scale).to(gradient.dtype) for gradient in gradients]
            with torch.no_grad():
                for parameter, move in zip(parameters, moves):
                    if move is not None:
                        parameter.add_(move)
            self._retain_served = served
            loss = super().training_step(model, inputs, num_items_in_batch)
        with torch.no_grad():
            for parameter, move in zip(parameters, moves):
                if move is not None:
                    parameter.sub_(move)
        add_gradients(parameters, averaged_over_processes(parameters, taken_gradients(parameters)))
        add_gradients(parameters, accumulated)
        return loss

    def _student_loss(self, model, inputs, targets, rows, cols, num_items_in_batch, level=None):
        """The loss from the student's full ``(B, T, V)`` logits; also the log-probabilities of the original tokens."""
        outputs = student_forward(model, inputs)
        # soft targets exist at the loss positions only; hard targets are laid out like shift_labels
        soft = targets.is_floating_point()
        log_probs = torch.log_softmax((outputs.logits[rows, cols] if soft else outputs.logits).float(), dim=-1)
        loss = distillation_loss(log_probs, targets, num_items_in_batch)
        if self.cap_weight and soft:
            original = inputs["shift_labels"][rows, cols]
            cap = original_token_cap(log_probs, targets, original, num_items_in_batch, level)
            loss = loss + self.cap_weight * cap
        if soft:
            chosen = log_probs.gather(-1, inputs["shift_labels"][rows, cols].unsqueeze(-1)).squeeze(-1)
        else:
            chosen = log_probs.gather(-1, inputs["shift_labels"].clamp(min=0).unsqueeze(-1)).squeeze(-1)[rows, cols]
        return loss, outputs, chosen.detach()

    def _chunked_student_loss(self, model, head, inputs, targets, rows, cols, num_items_in_batch, level=None):
        """The same loss from the student's final hidden states at the loss positions, through the LM head chunk by
        chunk ([`chunked_distillation_loss`][whp_trainer.targets.chunked_distillation_loss]): no ``(B, T, V)``
        logits."""
        peft_model = self.accelerator.unwrap_model(model)
        spec = logits_head(peft_model)
        with head_input_captured(peft_model) as captured:
            outputs = student_forward(model, inputs)
        with gathered(peft_model, head):
            loss, chosen = chunked_distillation_loss(
                captured[-1][rows, cols],
                head.weight,
                targets if targets.is_floating_point() else targets[rows, cols],
                inputs["shift_labels"][rows, cols],
                num_items_in_batch,
                chunk_size=self._chunk_size(head.out_features),
                softcap=spec.softcap,
                cap_weight=self.cap_weight,
                bias=head.bias,
                scale=spec.scale,
                cap_level=level,
            )
        # outputs.logits hold zero positions: adding them changes nothing but keeps the backward hooks that FSDP
        # sets on the model's output in the graph
        return loss + outputs.logits.sum(), outputs, chosen

    @torch.no_grad()
    def _cap_level(self, peft_model, inputs, targets, rows, cols) -> torch.Tensor | None:
        """With ``original_cap_depth``: where the original-token cap stops at each loss position
        ([`cap_level`][whp_trainer.targets.cap_level]), from the base's log-probability of each original token on the
        original text (one more pass of the base); otherwise None (the cap goes down to the target's)."""
        if self.args.original_cap_depth is None or not self.cap_weight:
            return None
        original = inputs["shift_labels"][rows, cols]
        head = logits_head(peft_model)
        with using_adapter(peft_model, BASELINE):
            states = final_states(peft_model, inputs["input_ids"], inputs["attention_mask"], head)[rows, cols]
        output_embeddings = peft_model.get_base_model().get_output_embeddings()
        base = torch.empty(len(rows), device=rows.device)
        chunks = torch.arange(len(rows), device=rows.device).split(self._chunk_size(output_embeddings.out_features))
        with gathered(peft_model, output_embeddings) if head.rebuilds else contextlib.nullcontext():
            for chunk in chunks:
                log_probs = torch.log_softmax(logits_from_states(peft_model, states[chunk], head).float(), dim=-1)
                base[chunk] = log_probs.gather(-1, original[chunk].unsqueeze(-1)).squeeze(-1)
        return cap_level(targets, original, base, self.args.original_cap_depth)

    def _chunk_size(self, vocab_size: int) -> int:
        """Positions per chunk of vocabulary-sized logits."""
        return self.args.logits_chunk_size or max(1, CHUNK_ELEMENTS // vocab_size)

    def _save_checkpoint(self, model, trial) -> None:
        """A checkpoint also holds, besides the retain batches' state (`RetainLoss`), what each callback with a
        ``save_to_checkpoint(folder)`` method saves there (`alpha: auto`'s stopping rule: its measurements and the
        weights it can go back to), so that a resumed run continues as one that was never interrupted. Those are
        written first: the Trainer writes its state last, and a checkpoint without it is passed over as incomplete."""
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            for callback in self.callback_handler.callbacks:
                if hasattr(callback, "save_to_checkpoint"):
                    callback.save_to_checkpoint(folder)
        super()._save_checkpoint(model, trial)

    def _checkpoint_attributes(self) -> dict:
        """Besides the retain loss's: the original-token cap's weight in use (alpha auto's stopping rule drops it)."""
        return {**super()._checkpoint_attributes(), "cap_weight": self.cap_weight}

    def _restore_attributes(self, saved: dict) -> None:
        super()._restore_attributes(saved)
        self.cap_weight = saved.get("cap_weight", self.args.original_cap_weight)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """On resume, with the optimizer and the schedule: each callback's ``load_from_checkpoint(folder)``."""
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            for callback in self.callback_handler.callbacks:
                if hasattr(callback, "load_from_checkpoint"):
                    callback.load_from_checkpoint(Path(checkpoint))

    @torch.no_grad()
    def compute_targets(self, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """The targets of a batch as ``(B, T, k)`` token ids (``-100`` = no loss) and probabilities: the argmax
        with probability 1 in ``"argmax"`` mode, the ``cache_top_k`` most likely tokens in ``"soft"`` mode."""
        rows, cols = (inputs["shift_labels"] != IGNORE_INDEX).nonzero(as_tuple=True)
        targets = self._generic_targets(self.accelerator.unwrap_model(self.model), inputs, rows, cols)
        if not targets.is_floating_point():
            ids = targets.unsqueeze(-1)
            return ids, (ids != IGNORE_INDEX).float()
        top = targets.topk(min(self.args.cache_top_k, targets.shape[-1]), dim=-1)
        ids = torch.full((*inputs["shift_labels"].shape, top.indices.shape[-1]), IGNORE_INDEX, device=rows.device)
        probs = torch.zeros(ids.shape, device=rows.device)
        ids[rows, cols], probs[rows, cols] = top.indices, top.values
        return ids, probs

    def _cached_targets(self, inputs, rows, cols) -> torch.Tensor:
        """Targets read from the cache, in the layout of `_generic_targets`."""
        ids, probs = inputs["cached_target_ids"], inputs["cached_target_probs"]
        if self.args.target_mode == "argmax":
            return ids[..., 0]
        vocab_size = self.accelerator.unwrap_model(self.model).get_base_model().get_output_embeddings().out_features
        top_probs = probs[rows, cols]
        soft = torch.zeros((len(rows), vocab_size), device=top_probs.device)
        soft.scatter_(-1, ids[rows, cols].clamp(min=0), top_probs / top_probs.sum(-1, keepdim=True).clamp(min=1e-12))
        return soft

    def _teacher_states(self, peft_model, head, inputs, rows, cols) -> dict[str, torch.Tensor]:
        """The teachers' [`final_states`][whp_trainer.models.final_states] at the loss positions: ``(N, H)`` for the
        reinforced teacher, ``(K, N, H)`` for the baseline reading each of the ``K`` translations of the blocks (the
        original block at the positions of ``bootstrap_mask``); ``V`` in place of ``H`` where the model's logits are
        not rebuilt from its hidden states."""
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        passes = {  # name -> (adapter, ids, attention mask, positions read)
            "baseline": (BASELINE, inputs.get("translated_input_ids", ids), inputs.get("translated_attention_mask", mask),
                         translated_positions(inputs, rows, cols)),
        }
        bootstrapped = inputs["bootstrap_mask"][rows, cols] if "bootstrap_mask" in inputs else None
        if bootstrapped is not None and bootstrapped.any():
            passes["original baseline"] = (BASELINE, ids, mask, (rows[bootstrapped], cols[bootstrapped]))
        if self.has_reinforced:
            passes["reinforced"] = (self.args.reinforced_adapter_name, ids, mask, (rows, cols))
        if self.args.fused_teacher_pass and len(passes) > 1:
            hidden = self._fused_teacher_pass(peft_model, passes, head)
        else:
            hidden = {}
            for name, (adapter, pass_ids, pass_mask, positions) in passes.items():
                with using_adapter(peft_model, adapter):
                    hidden[name] = final_states(peft_model, pass_ids, pass_mask, head)[positions]
        if "original baseline" in hidden:
            hidden["baseline"][:, bootstrapped] = hidden.pop("original baseline")
        return hidden

    def _fused_teacher_pass(self, peft_model, passes: dict, head) -> dict[str, torch.Tensor]:
        """Every teacher pass in one forward (PEFT mixed batch: an adapter name per row); the states at each pass's
        positions."""
        width = max(pass_ids.shape[1] for _, pass_ids, _, _ in passes.values())
        stacked_ids = torch.cat([pad_to_width(pass_ids, width) for _, pass_ids, _, _ in passes.values()])
        stacked_mask = torch.cat([pad_to_width(pass_mask, width) for _, _, pass_mask, _ in passes.values()])
        names = [
            "__base__" if adapter is BASELINE else adapter
            for adapter, pass_ids, _, _ in passes.values()
            for _ in range(len(pass_ids))
        ]
        with using_adapter(peft_model, adapter_names=names):
            states = final_states(peft_model, stacked_ids, stacked_mask, head)
        hidden, start = {}, 0
        for name, (_, pass_ids, _, positions) in passes.items():
            hidden[name] = states[start : start + len(pass_ids)][positions]
            start += len(pass_ids)
        return hidden

    @torch.no_grad()
    def _generic_targets(self, peft_model, inputs, rows, cols) -> torch.Tensor:
        """Generic targets at the loss positions, from the teacher passes, built chunk by chunk so at most one chunk
        of vocabulary-sized teacher logits exists at a time. Hard targets come back as a ``(B, T)`` id tensor
        (``-100`` = no loss), soft targets as ``(N, V)`` probabilities of the ``N`` loss positions."""
        args = self.args
        head = logits_head(peft_model)
        teacher = self._teacher_states(peft_model, head, inputs, rows, cols)
        baseline_rows, _ = translated_positions(inputs, rows, cols)
        suppressed = inputs["suppress_ids"][baseline_rows, cols] if "suppress_ids" in inputs else None
        output_embeddings = peft_model.get_base_model().get_output_embeddings()
        vocab_size = output_embeddings.out_features
        translations = len(teacher["baseline"])
        chunk_size = max(1, self._chunk_size(vocab_size) // translations)  # K translations' logits per chunk
        chunks = []
        with gathered(peft_model, output_embeddings) if head.rebuilds else contextlib.nullcontext():  # once
            for chunk in torch.arange(len(rows), device=rows.device).split(chunk_size):
                if self.has_reinforced:
                    reinforced = logits_from_states(peft_model, teacher["reinforced"][chunk], head)
                generics = []
                for k in range(translations):
                    generic = logits_from_states(peft_model, teacher["baseline"][k, chunk], head)
                    if self.has_reinforced:
                        generic = generic_logits(generic, reinforced, args.alpha, relu=args.relu,
                                                 spared=self.spared_tokens)
                    if suppressed is not None and args.suppression_penalty:
                        generic = suppress(generic, suppressed[k, chunk], args.suppression_penalty)
                    generics.append(generic)
                chunks.append(averaged_targets(generics, args.target_mode, args.temperature))
        if args.target_mode == "soft":
            return torch.cat(chunks) if chunks else torch.zeros((0, vocab_size), device=rows.device)
        hard = torch.full_like(inputs["shift_labels"], IGNORE_INDEX)
        if chunks:
            hard[rows, cols] = torch.cat(chunks)
        return hard

    def _record_metrics(self, top, original, original_log_probs) -> None:
        """Record the fraction of targets that differ from the original next token, and the mean probability the
        student gives that token: means over the loss positions of all processes (summed across them first)."""
        sums = torch.stack(
            [(top != original).sum().float(), original_log_probs.float().exp().sum(), top.new_tensor(len(top)).float()]
        )
        changed, probability, count = self.accelerator.reduce(sums, reduction="sum").tolist()
        if count == 0:
            return
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["target_changed_fraction"].append(changed / count)
        self._metrics[mode]["student_original_token_prob"].append(probability / count)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        for key, values in self._metrics[mode].items():
            logs[prefix + key] = sum(values) / len(values)
        self._metrics[mode].clear()
        super().log(logs, start_time)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Save the unlearning adapter alone (never the reinforced one: it knows the target better than the base),
        where the reinforced adapter came from (``whp_reinforced.json``, never uploaded), and the card."""
        output_dir = output_dir or self.args.output_dir
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        save = functools.partial(type(model).save_pretrained, model, selected_adapters=[self.args.unlearn_adapter_name])
        with mock.patch.object(model, "save_pretrained", save):
            super()._save(output_dir, state_dict)
        if self.args.should_save:  # after PEFT, which writes a README.md of its own
            self._write_model_card(output_dir)
            record_reinforced_adapter(output_dir, self.reinforced_adapter)

    def push_to_hub(self, *args, **kwargs):
        """``Trainer.push_to_hub``, never uploading the reinforced adapter, optimizer state or whp's local records."""
        with self._local_files_kept_local():
            return super().push_to_hub(*args, **kwargs)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        with self._local_files_kept_local():
            super()._push_from_checkpoint(checkpoint_folder)

    @contextlib.contextmanager
    def _local_files_kept_local(self):
        """Every ``upload_folder`` of the Trainer's push paths (all ``hub_strategy`` values) gets whp's ignore patterns.
        Patching fails loudly if transformers stops calling ``hf_api`` there, rather than uploading unfiltered."""
        ignored = local_only_patterns(self.args.reinforced_adapter_name)
        excluded = functools.partial(content_excluded, token=self.args.hub_token or get_token(),
                                     reinforced=adapter_file_fingerprints(self.reinforced_adapter))
        original = transformers.trainer.hf_api
        with mock.patch.object(transformers.trainer, "hf_api", lambda: FilteredUploads(original(), ignored, excluded)):
            yield

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None, **kwargs) -> None:
        """Write the run's model card to ``output_dir`` (``Trainer.push_to_hub`` calls this before uploading)."""
        if self.is_world_process_zero():
            self.dataset_description = dataset_name or self.dataset_description
            self._write_model_card(self.args.output_dir, model_name)

    def _write_model_card(self, folder: str, model_name: str | None = None) -> None:
        model = self.accelerator.unwrap_model(self.model)
        anchors = self.anchors
        write_model_card(
            folder,
            self.args,
            model_name=model_name or os.path.basename(os.path.normpath(self.args.output_dir)),
            base_model=model.get_base_model().config._name_or_path or None,
            reinforced_adapter=self.reinforced_adapter,
            dictionary=None if anchors is None else {"size": len(anchors), "hash": anchors.content_hash},
            dataset_description=self.dataset_description,
            peft_config=model.peft_config[self.args.unlearn_adapter_name],
            all_linear_default=self.all_linear_lora,
            eval_results=self.eval_results,
            auto=self.auto_choice,
            tags=self._tag_names,
            datasets=self.dataset_ids,
            tracker_urls=tracker_urls(),
            steps_trained=self.state.global_step,
            base_quantization=base_quantization(model.get_base_model()),
        )

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation loss on batches of the unlearning format (the default step expects ``labels``)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


def taken_gradients(parameters: list[nn.Parameter]) -> list[torch.Tensor | None]:
    """The parameters' gradients, which they no longer hold (``None``: no gradient)."""
    gradients = [parameter.grad for parameter in parameters]
    for parameter in parameters:
        parameter.grad = None
    return gradients


def positions_per_process(count: torch.Tensor) -> torch.Tensor:
    """The mean over the processes of ``count`` (this process's loss positions): a sum over this process's positions
    divided by it, averaged over the processes as DDP averages gradients, is the mean over all their positions, as
    one process of the global batch would take it. ``count`` itself in one process."""
    processes = process_count()
    if processes == 1:
        return count
    total = count.detach().float().clone()
    torch.distributed.all_reduce(total)
    return total / processes


def averaged_over_processes(parameters: list[nn.Parameter],
                            gradients: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """``gradients`` (of ``parameters``) averaged over the processes of a multi-process run, as DDP averages a plain
    step's (``None`` counts as zero); in one process, as given."""
    processes = process_count()
    if processes == 1:
        return gradients
    parts = [torch.zeros_like(parameter) if gradient is None else gradient
             for parameter, gradient in zip(parameters, gradients)]
    flat = torch.cat([part.reshape(-1).float() for part in parts])
    torch.distributed.all_reduce(flat)
    flat /= processes
    sizes = [part.numel() for part in parts]
    return [piece.view_as(part).to(part.dtype) for piece, part in zip(flat.split(sizes), parts)]


def add_gradients(parameters: list[nn.Parameter], gradients: list[torch.Tensor | None]) -> None:
    """Add ``gradients`` (``None``: none) to what the parameters hold."""
    for parameter, gradient in zip(parameters, gradients):
        if gradient is not None:
            parameter.grad = gradient if parameter.grad is None else parameter.grad + gradient


def translated_positions(inputs, rows, cols) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and columns ``(K, N)`` of the baseline's stand-ins for the ``N`` loss positions ``(rows, cols)`` in each
    of the ``K`` translations of the blocks (the original positions themselves when the batch is not translated)."""
    if "alignment" not in inputs:
        return rows[None], cols[None]
    variants = torch.arange(translations_in(inputs), device=rows.device)[:, None]
    translated_rows = rows[None] + variants * len(inputs["input_ids"])
    return translated_rows, inputs["alignment"][translated_rows, cols[None]]


def student_forward(model, inputs):
    """The student's forward (through the wrapped model: DDP, FSDP or DeepSpeed) on the original block."""
    return model(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        position_ids=position_ids_from_mask(inputs["attention_mask"]),
        use_cache=False,
    )


class FilteredUploads:
    """An ``HfApi`` whose ``upload_folder`` always ignores ``ignored`` (fnmatch patterns) as well, and the files
    ``excluded(folder, files)`` finds by their content (see `whp_trainer.hub.content_excluded`)."""

    def __init__(self, api, ignored: list[str], excluded):
        self.api, self.ignored, self.excluded = api, ignored, excluded

    def __getattr__(self, name):
        return getattr(self.api, name)

    def upload_folder(self, *args, folder_path, ignore_patterns=None, **kwargs):
        if isinstance(ignore_patterns, str):
            ignore_patterns = [ignore_patterns]
        folder = Path(folder_path)
        files = [path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()]
        by_content = [glob.escape(relative) for relative in self.excluded(folder, files)]
        return self.api.upload_folder(*args, folder_path=folder_path,
                                      ignore_patterns=[*(ignore_patterns or []), *self.ignored, *by_content], **kwargs)


def check_vocabulary(model, tokenizer) -> None:
    """Refuse a tokenizer with ids the model has no embedding for (it would fail at the first step)."""
    if tokenizer is None or not hasattr(tokenizer, "__len__") or not hasattr(model, "get_input_embeddings"):
        return
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the model embeds only {rows}: they do not belong together "
            "(load the tokenizer of the same checkpoint, or resize the model's embeddings)"
        )


def _model_from_id(model_id: str, args: UnlearnConfig, processing_class):
    """The model of ``model_id`` loaded as TRL's trainers load it (``args.model_init_kwargs``; dtype float32 unless
    given), and its tokenizer (pad token: EOS if it has none) when ``processing_class`` is None."""
    from trl.trainer.utils import create_model_from_path  # TRL's own loader; trl is slow to import

    kwargs = {"trust_remote_code": args.trust_remote_code, **(args.model_init_kwargs or {})}
    model = create_model_from_path(model_id, **kwargs)
    if kwargs.get("gguf_file"):
        model = without_gguf_quantizer(model)
    if processing_class is None:
        processing_class = AutoTokenizer.from_pretrained(
            model_id, revision=kwargs.get("revision"), trust_remote_code=kwargs["trust_remote_code"],
            gguf_file=kwargs.get("gguf_file"),
        )
        processing_class.pad_token = processing_class.pad_token or processing_class.eos_token
    return model, processing_class


def _load_anchors(anchors) -> AnchorDictionary | None:
    """An ``AnchorDictionary`` from a dictionary, a path to a dictionary file, or plain entries."""
    if anchors is None or isinstance(anchors, AnchorDictionary):
        return anchors
    if isinstance(anchors, (str, os.PathLike)):
        return AnchorDictionary.load(anchors)
    return AnchorDictionary(anchors)


def retain_token_blocks(retain_dataset, tokenizer, args) -> list[list[int]] | None:
    """Token-id blocks of ``max_length`` of the retain text; an error when ``retain_weight`` asks for them and none
    are given."""
    if not args.retain_weight:
        return None
    if retain_dataset is None:
        raise ValueError(f"{type(args).__name__}.retain_weight > 0 needs retain_dataset= (ordinary text to keep)")
    if isinstance(retain_dataset, Dataset) and "input_ids" in retain_dataset.column_names:
        blocks = [list(ids) for ids in retain_dataset["input_ids"]]
    else:
        if tokenizer is None:
            raise ValueError("retain_dataset of text needs processing_class (the tokenizer)")
        texts = retain_dataset[args.dataset_text_field] if isinstance(retain_dataset, Dataset) else list(retain_dataset)
        blocks = split_into_blocks(texts, tokenizer, args.max_length)
    if not blocks:
        raise ValueError("retain_dataset holds no block of at least 2 tokens")
    return blocks

