"""``UnlearnConfig``: the unlearning stage's settings, a ``TrainingArguments`` with TRL's training defaults (as TRL's
configs are); and what both stages' configs share (auto bf16, Hub tokens kept out of pickles, ``max_steps`` checks).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments
from transformers.utils import is_torch_bf16_gpu_available

from .targets import RETAIN_LOSSES, TARGET_MODES


AUTO = "auto"


def checked_alpha(alpha) -> float | str:
    """``"auto"``, or α as a non-negative number (a flag or YAML value may give it as text)."""
    if isinstance(alpha, str) and alpha.strip().lower() == AUTO:
        return AUTO
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"UnlearnConfig.alpha={alpha!r}: expected a number >= 0 or 'auto'") from None
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"UnlearnConfig.alpha={alpha}: must be a finite number >= 0")
    return alpha


class TokensNotPickled:
    """Pickling (the Trainer's ``torch.save`` of ``training_args.bin``, in every checkpoint) leaves out every
    ``*_token`` field, and ``to_dict`` (what TensorBoard, W&B and the other trackers log) shows none, so that no Hub
    token reaches a file that may be uploaded; a secret inside another field (``model_init_kwargs={"token": ...}``,
    a value that looks like a Hub token) is masked in both (see `masked_secrets`)."""

    def __getstate__(self):
        return {key: None if key.endswith("_token") else masked_secrets(value) for key, value in self.__dict__.items()}

    def to_dict(self):
        return masked_secrets(super().to_dict())


SECRET_KEYS = re.compile(r"(^|_)(token|password|secret|api_key|apikey|authorization)$", re.IGNORECASE)
HUB_TOKEN = re.compile(r"hf_[A-Za-z0-9]{20,}")
MASK = "<SECRET>"


def masked_secrets(value, key: str = ""):
    """``value`` with every string under a secret-like key (``token``, ``*_token``, ``password``, ``api_key``, …) or
    holding a Hub token (``hf_…``) replaced by ``<SECRET>``, at any depth of dicts, lists and tuples; a copy."""
    if isinstance(value, dict):
        return {name: masked_secrets(item, str(name)) for name, item in value.items()}
    if type(value) in (list, tuple):
        return type(value)(masked_secrets(item) for item in value)
    if isinstance(value, str) and (SECRET_KEYS.search(key) or HUB_TOKEN.search(value)):
        return MASK
    return value


def auto_bf16_field():
    """The ``bf16`` field of whp's configs: ``None`` by default, resolved by `resolve_auto_bf16`."""
    return field(
        default=None,
        metadata={
            "help": "bf16 mixed precision. None (default): on when a GPU or XPU supports bf16 and fp16 is off, else "
            "off, so that the config also works as is on a CPU (TRL's configs would turn it on and then fail there)."
        },
    )


def resolve_auto_bf16(args: TrainingArguments) -> None:
    """``bf16=None`` becomes True where a GPU or XPU supports bf16 and ``fp16`` is off, else False (before
    ``TrainingArguments.__post_init__`` checks it)."""
    if args.bf16 is None:
        args.bf16 = not args.fp16 and is_torch_bf16_gpu_available()


def check_max_steps(args: TrainingArguments) -> None:
    """``max_steps`` is a positive number of steps, or -1 (train ``num_train_epochs``); anything else is a typo."""
    if args.max_steps == 0 or args.max_steps < -1:
        raise ValueError(
            f"{type(args).__name__}.max_steps={args.max_steps}: give a positive number of steps, or -1 to train "
            "num_train_epochs"
        )


def check_trains(args: TrainingArguments) -> None:
    """Refuse what cannot train: a learning rate that is not a finite positive number, or no step at all
    (``max_steps=-1`` with ``num_train_epochs <= 0``), and a tracker that does not exist; each error names the key."""
    name = type(args).__name__
    check_max_steps(args)
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        raise ValueError(f"{name}.learning_rate={args.learning_rate}: must be a finite number > 0 (else the adapter "
                         "never moves from the base)")
    if args.max_steps == -1 and not (math.isfinite(args.num_train_epochs) and args.num_train_epochs > 0):
        raise ValueError(f"{name}.num_train_epochs={args.num_train_epochs} with max_steps=-1 trains no step: give "
                         "num_train_epochs > 0 or max_steps > 0")
    check_report_to(args)


def check_report_to(args: TrainingArguments) -> None:
    """Every ``report_to`` entry is a tracker transformers knows (a typo would fail only once the model is loaded)."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    names = [args.report_to] if isinstance(args.report_to, str) else list(args.report_to or [])
    unknown = sorted(set(names) - {"all", "none", *INTEGRATION_TO_CALLBACK})
    if unknown:
        raise ValueError(f"{type(args).__name__}.report_to: unknown tracker(s) {unknown}; expected among "
                         f"{sorted(INTEGRATION_TO_CALLBACK)}, all or none")


def check_finite(args, names: tuple[str, ...]) -> None:
    """The fields ``names`` of ``args`` hold finite numbers (NaN and inf pass every ``<`` check, then poison the
    targets)."""
    for name in names:
        if not math.isfinite(getattr(args, name)):
            raise ValueError(f"{type(args).__name__}.{name}={getattr(args, name)}: must be a finite number")


@dataclass
class TrlTrainingArguments(TrainingArguments):
    """``TrainingArguments`` with the three defaults TRL's configs change, so that
    [`UnlearnConfig`][whp_trainer.UnlearnConfig] agrees with [`ReinforceConfig`][whp_trainer.reinforce.ReinforceConfig]
    (an ``SFTConfig``): ``logging_steps=10``, ``gradient_checkpointing=True``, and ``bf16`` on where a GPU or XPU
    supports it."""

    logging_steps: float = field(
        default=10,
        metadata={"help": "Log (and, with --probes, measure familiarity) every X update steps; a float below 1 is a "
                  "ratio of the total steps. TRL's default (TrainingArguments: 500)."},
    )
    gradient_checkpointing: bool = field(
        default=True,
        metadata={"help": "Recompute the student's activations in the backward pass instead of keeping them: less "
                  "memory, a fifth more time or so. TRL's default (TrainingArguments: False); turn it off for small "
                  "models on a CPU, where it only costs time."},
    )
    bf16: bool | None = auto_bf16_field()

    def __post_init__(self):
        resolve_auto_bf16(self)
        super().__post_init__()


@dataclass
class UnlearnConfig(TokensNotPickled, TrlTrainingArguments):
    """Settings of [`UnlearnTrainer`][whp_trainer.UnlearnTrainer]. Every ``TrainingArguments`` field applies as well.

    Defaults follow Eldan & Russinovich (2023): α = 5, ReLU on the reinforced boost, argmax (hard) targets, both
    consistency rules on, blocks of 512 tokens. The training defaults are TRL's, as in
    [`ReinforceConfig`][whp_trainer.reinforce.ReinforceConfig]: ``logging_steps=10``,
    ``gradient_checkpointing=True`` and ``bf16`` on where the GPU supports it (``TrainingArguments`` has 500, False
    and False).
    """

    output_dir: str = field(
        default="whp-unlearned",
        metadata={"help": "Where the unlearning adapter, its card and the checkpoints are written."},
    )
    _VALID_DICT_FIELDS = TrainingArguments._VALID_DICT_FIELDS + ["model_init_kwargs"]

    alpha: float | str = field(
        default=5.0,
        metadata={"help": "α in v_generic = v_baseline − α·ReLU(v_reinforced − v_baseline). The paper uses 5. 'auto' "
                  "(whp unlearn / whp run): the teacher is measured at auto_alphas against the targets (membership "
                  "of forget vs holdout_data, familiarity against the base on anchor-translated probes), the α that "
                  "reaches them at the least retain-perplexity cost is used, and the student stops at the targets "
                  "or at a budget (retain_budget, neighbour_budget), ending on its best measurement."},
    )
    holdout_data: str | None = field(
        default=None,
        metadata={"help": "alpha auto: text of the forget target's kind that the model never read (the non-members "
                  "of the membership test); same forms as --forget_data. Without it, membership is no target. Without "
                  "--budget_data the perplexity budget also holds, apart, on the holdout blocks membership reads."},
    )
    oracle_model: str | None = field(
        default=None,
        metadata={"help": "alpha auto: a model of the same tokenizer that never read the target; its membership "
                  "AUCs and familiarity become the targets (default: AUC 0.5, the base on anchor-translated probes)."},
    )
    neighbour_knowledge: str | None = field(
        default=None,
        metadata={"help": "alpha auto: knowledge that must stay ({question, true_answer, false_answer} or "
                  "{prompt, answer} rows, .jsonl/.json/.csv); the student stops once its mean answer log-likelihood "
                  "falls more than neighbour_budget below the base's. Default: the package's 160 general facts "
                  "(geography, science, literature, other fiction…), less those naming an anchored term."},
    )
    forget_knowledge: str | None = field(
        default=None,
        metadata={"help": "alpha auto: knowledge of the target to forget, as {question, true_answer, false_answer} or "
                  "{prompt, answer, false_answer} rows (.jsonl/.json/.csv; the false answer a plausible wrong one, "
                  "rows without one are not read); a target: the true answers no more likely per token than the "
                  "false ones (a model that never read the target has no reason to prefer them; with "
                  "--oracle_model, the oracle's margin), within familiarity_share of the base's margin."},
    )
    budget_data: str | None = field(
        default=None,
        metadata={"help": "alpha auto: ordinary text whose perplexity is the cost of a teacher and the student's "
                  "retain budget; best text the model did not train on and the retain loss does not see (its "
                  "memorized text loses perplexity first). Same forms as --forget_data; default: a quarter of "
                  "--retain_data's blocks (at most 64), which the retain loss then does not read, and, each apart, the "
                  "package's general text and --holdout_data."},
    )
    auto_alphas: list[float] = field(
        default_factory=lambda: [2.0, 3.0, 5.0, 7.0, 10.0, 14.0, 20.0, 28.0, 40.0],
        metadata={"help": "alpha auto: the α at which the teacher is measured (two forward passes per batch for all)."},
    )
    auto_reinforce_rounds: int = field(
        default=2,
        metadata={"help": "alpha auto: when no teacher reaches the targets, retrain the reinforced adapter with "
                  "auto_reinforce_factor times the epochs and learning rate (into <reinforced_adapter>-roundN) "
                  "and sweep again, at most this many times; 0 = never."},
    )
    auto_reinforce_factor: float = field(
        default=2.0, metadata={"help": "alpha auto: how much each strengthening multiplies epochs and learning rate."}
    )
    membership_tolerance: float = field(
        default=0.05, metadata={"help": "alpha auto: the membership AUC targets (of both attacks, Min-K and "
                                        "Min-K++) are reached within this distance."}
    )
    familiarity_tolerance: float = field(
        default=0.02,
        metadata={"help": "alpha auto: familiarity and entity probability reach their reference up to this much above."},
    )
    familiarity_share: float = field(
        default=0.1,
        metadata={"help": "alpha auto without --oracle_model: the tolerance is at most this share of the base's own "
                  "distance to the reference (a pretrained model puts little probability on any exact name: an "
                  "absolute tolerance alone would find it forgotten before training). 0.1: on the demo, where "
                  "familiarity_tolerance was set, 0.02 is 8 percent of that distance. A run whose kept weights went "
                  "less than this share of the way from the base to every target did not unlearn: it is not marked "
                  "finished."},
    )
    teacher_budget: float = field(
        default=1.0,
        metadata={"help": "alpha auto: a teacher counts as reaching the targets only if its retain perplexity is at "
                  "most this share above the base's (1.0: twice the base's); when none does, the reinforcement is "
                  "strengthened. A student follows its teacher only part of the way within retain_budget."},
    )
    retain_budget: float = field(
        default=0.03,
        metadata={"help": "alpha auto: the student stops once retain perplexity rises more than this share above "
                  "the base's (0.03: 3 percent)."},
    )
    budget_confidence: float = field(
        default=0.95,
        metadata={"help": "alpha auto: retain perplexity counts as within retain_budget only when the upper end of its "
                  "one-sided confidence interval at this level is, and neighbour knowledge as within "
                  "neighbour_budget only when the lower end of its interval is: the stopping rule reads a sample of "
                  "the budget's text and of the knowledge to keep, and the budgets are for text and knowledge of "
                  "that kind it did not read (the intervals come from the per-block and per-row change against the "
                  "base, with Student's t: varied text and few rows widen them). 0.5: the sample's reading itself."},
    )
    neighbour_budget: float = field(
        default=0.1,
        metadata={"help": "alpha auto: with a neighbour-knowledge measure, the student stops once the mean answer "
                  "log-likelihood (the lower end of its budget_confidence interval) falls more than this many nats "
                  "below the base's."},
    )
    budget_patience: int = field(
        default=3,
        metadata={"help": "alpha auto: a budget is spent when it is exceeded at this many measurements in a row once "
                  "the retain weight, doubled at each measurement over budget, has reached 4x its setting (early "
                  "steps often overshoot what the retain loss then brings back)."},
    )
    budget_backtrack: bool = field(
        default=True,
        metadata={"help": "alpha auto: at a measurement over budget with the retain weight at its ceiling, put the "
                  "student back to its best measurement within budget (when none was yet, to the furthest point "
                  "within budget that three measurements bisecting the line from where it began to where it is find, "
                  "else to where it began), halve the learning rate and clear the optimizer's moments (a "
                  "backtracking line search: the steps were too large for the budget); a run with no measurement "
                  "within budget ends on the same search from where it began to the measurement least over. False: "
                  "keep going from where it is."},
    )
    budget_end_search: bool = field(
        default=True,
        metadata={"help": "alpha auto, with budget_backtrack: a run that ends short of its targets with a measurement "
                  "over budget closer to them than its best bisects the line from its best weights to that "
                  "measurement's (three measurements), then, still short, the line from where the run began to it "
                  "(three more), and ends on the point within budget closest to the targets. It ends on the "
                  "budget's edge: other text of the kind can read over the budget there. False: end on the best "
                  "measurement."},
    )
    budget_drop_cap: bool = field(
        default=True,
        metadata={"help": "alpha auto, with budget_backtrack and an original-token cap (original_cap_weight > 0): the "
                  "first backtrack drops the cap (its weight to 0) instead of halving the learning rate; later "
                  "ones halve the rate. The cap pushes down the forget text's unlikely tokens and with them those of "
                  "text like it: on a pretrained model that read the target it costs ordinary text several times "
                  "what the distillation to the generic targets does for the same forgetting. False: keep the cap."},
    )
    auto_eval_steps: int = field(
        default=8,
        metadata={"help": "alpha auto: the student is measured against the targets every this many steps, or less "
                  "often on a long run (see auto_max_measurements)."},
    )
    auto_max_measurements: int = field(
        default=12,
        metadata={"help": "alpha auto: at most about this many measurements of the student over the run's steps "
                  "(each costs a few training steps): the interval is the larger of auto_eval_steps and "
                  "max steps / this; 0 = every auto_eval_steps whatever the run's length."},
    )
    relu: bool = field(
        default=True,
        metadata={"help": "Clip the reinforced boost at zero (the paper). False also raises tokens it lowers."},
    )
    target_mode: str = field(
        default="argmax",
        metadata={"help": "'argmax': cross-entropy to argmax v_generic (the paper); "
                  "'soft': KL to softmax(v_generic/τ)."},
    )
    temperature: float = field(
        default=1.0,
        metadata={"help": "τ of the soft targets softmax(v_generic / τ); used with target_mode='soft', and to average "
                  "the distributions of several translations (translations_per_block > 1)."},
    )
    exclude_repeated_anchors: bool = field(
        default=True,
        metadata={"help": "Consistency rule 1: no loss on an anchor's second and later appearances in a block."},
    )
    suppress_used_translations: bool = field(
        default=True,
        metadata={"help": "Consistency rule 2: push down the tokens of translations already used earlier in a block."},
    )
    suppression_penalty: float = field(
        default=5.0,
        metadata={"help": "How much is subtracted from the logits of suppressed translation tokens (rule 2)."},
    )
    translations_per_block: int = field(
        default=1,
        metadata={"help": "Beyond the paper, WHP+ (Liu et al. 2024): translate each block this many times, each "
                  "anchor taking a different one of its translations, and average the N target distributions (one "
                  "baseline pass per translation). 1 = the paper: one translation per anchor per block."},
    )
    bootstrap_untranslated: bool = field(
        default=False,
        metadata={"help": "Beyond the paper: also train the positions the paper leaves without a loss (inside "
                  "multi-token anchors, before repeated anchors), towards the bootstrapped target there: the baseline "
                  "reads the original block (one more baseline pass per step). False = the paper."},
    )
    max_length: int = field(
        default=512, metadata={"help": "Block length in tokens (the paper: 512). Longer texts are truncated."}
    )
    dataset_text_field: str = field(
        default="text", metadata={"help": "Column of the training dataset holding raw text."}
    )
    unlearn_adapter_name: str = field(
        default="default",
        metadata={"help": "Name of the trainable unlearning adapter; 'default' saves it at the output_dir's root."},
    )
    reinforced_adapter_name: str = field(
        default="reinforced",
        metadata={"help": "Name of the frozen reinforced adapter; saved in the subfolder of that name."},
    )
    logits_chunk_size: int | None = field(
        default=None,
        metadata={
            "help": "Loss positions per chunk when turning teacher hidden states into logits, so that peak memory "
            "holds one chunk of vocabulary-sized teacher logits, not B×T×V. "
            "Default: 2**25 // vocabulary size (261 positions for a 128k vocabulary)."
        },
    )
    fused_teacher_pass: bool = field(
        default=False,
        metadata={
            "help": "Run baseline and reinforced teachers in one forward of twice the batch (PEFT mixed-batch "
            "adapter_names) instead of two. Measured slower on CPU (benchmarks/bench_step.py); try it on GPUs."
        },
    )
    chunked_student_loss: bool = field(
        default=True,
        metadata={
            "help": "Compute the student loss from its final hidden states through the LM head chunk by chunk "
            "(logits_chunk_size positions at a time, each chunk's gradient taken in the forward), so B×T×V student "
            "logits never exist. Used when the LM head is a frozen, unquantized nn.Linear and the model's logits are "
            "rebuilt exactly from its hidden states (checked before training); else the plain loss."
        },
    )
    cache_targets: bool = field(
        default=False,
        metadata={
            "help": "Compute the targets of the training set once (teacher passes) and store them with the datasets "
            "cache, keyed by base, reinforced adapter, dictionary and settings; every epoch then reads them."
        },
    )
    cache_top_k: int = field(
        default=32, metadata={"help": "Soft mode with cache_targets: how many most likely tokens are stored."}
    )
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments of AutoModelForCausalLM.from_pretrained when the trainer's model is given as a "
            "Hub id or path (as TRL's model_init_kwargs): dtype, quantization_config, attn_implementation, revision, "
            "gguf_file (the tokenizer is read from it too)."
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow models and tokenizers that ship their own Python code from the Hub (as in TRL)."},
    )
    skip_unchanged_targets: bool = field(
        default=False,
        metadata={"help": "Beyond the paper, hard targets: no loss where argmax v_generic is the original next "
                  "token, so training never raises a memorized token's probability."},
    )
    original_cap_weight: float = field(
        default=0.0,
        metadata={"help": "Beyond the paper, soft targets: weight of ReLU(log p_student(original) − "
                  "log p_target(original)), pushing the original token down to the target's probability in log "
                  "space, never up; 0 = off."},
    )
    original_cap_depth: float | None = field(
        default=None,
        metadata={"help": "Beyond the paper: the original-token cap pushes the original token at most this many nats "
                  "below the base model's own log-probability of it on the original text (one more forward pass of "
                  "the base per step); unset = down to the target's probability, however far into its tail."},
    )
    spare_common_tokens: float = field(
        default=0.0,
        metadata={"help": "Beyond the paper: the reinforced boost never lowers the retain text's commonest tokens, "
                  "those that make up this share of its tokens (0.5: its punctuation, articles and commonest words), "
                  "which the reinforced model is surer of wherever it memorized the target; needs retain_weight > 0 "
                  "and a retain dataset; 0 = off (the paper)."},
    )
    retain_weight: float = field(
        default=0.0,
        metadata={"help": "Beyond the paper: weight of the retain loss on retain blocks interleaved with the forget "
                  "batches (one retain batch per step; needs a retain dataset); 0 = off (the paper)."},
    )
    retain_loss: str = field(
        default="kl",
        metadata={"help": "'kl': KL(base ‖ student) on retain text (keep the base's predictions); 'nll': plain "
                  "language-modelling loss on retain text.", "choices": list(RETAIN_LOSSES)},
    )
    sam_rho: float = field(
        default=0.0,
        metadata={"help": "Beyond the paper: sharpness-aware unlearning against relearning (Fan et al., ICML 2025): "
                  "each step's gradient is taken at the trainable weights moved sam_rho along their normalised "
                  "gradient, so training settles where a few fine-tuning steps move the loss least; two "
                  "forward-backward passes per step; 0 = off (the paper)."},
    )
    retain_projection: bool = field(
        default=False,
        metadata={"help": "Beyond the paper: each step's forget gradient loses its component along the retain "
                  "text's language-modelling gradient where the two conflict (gradient projection, as PCGrad, Yu et "
                  "al. 2020), so a step does not, to first order, raise the retain text's loss; one more retain "
                  "forward-backward pass per step; needs retain_weight > 0 and no sam_rho; one process or DDP (not "
                  "DeepSpeed or FSDP, whose gradients are sharded)."},
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Kept False: the collator needs the raw text columns (as in TRL)."},
    )

    @property
    def auto(self) -> bool:
        """Whether α is chosen by the teacher sweep (``alpha: auto``)."""
        return self.alpha == AUTO

    def __post_init__(self):
        super().__post_init__()
        check_trains(self)
        self.alpha = checked_alpha(self.alpha)
        check_finite(self, ("temperature", "suppression_penalty", "retain_weight", "original_cap_weight", "sam_rho",
                            "spare_common_tokens"))
        if self.target_mode not in TARGET_MODES:
            raise ValueError(f"UnlearnConfig.target_mode={self.target_mode!r}: expected one of {TARGET_MODES}")
        if self.retain_loss not in RETAIN_LOSSES:
            raise ValueError(f"UnlearnConfig.retain_loss={self.retain_loss!r}: expected one of {RETAIN_LOSSES}")
        if not 0 <= self.spare_common_tokens < 1:
            raise ValueError(f"UnlearnConfig.spare_common_tokens={self.spare_common_tokens}: must be in [0, 1)")
        if self.spare_common_tokens and not self.retain_weight:
            raise ValueError("UnlearnConfig.spare_common_tokens reads the retain text: set retain_weight > 0 and give "
                             "a retain dataset")
        if self.original_cap_weight < 0:
            raise ValueError(f"UnlearnConfig.original_cap_weight={self.original_cap_weight}: must be >= 0")
        if self.original_cap_weight and (self.target_mode != "soft" or self.cache_targets):
            raise ValueError("UnlearnConfig.original_cap_weight needs target_mode='soft' and cache_targets=False")
        if self.original_cap_depth is not None:
            if not math.isfinite(self.original_cap_depth) or self.original_cap_depth < 0:
                raise ValueError(f"UnlearnConfig.original_cap_depth={self.original_cap_depth}: must be a number >= 0")
            if not self.original_cap_weight:
                raise ValueError("UnlearnConfig.original_cap_depth bounds the original-token cap: set "
                                 "original_cap_weight > 0 too")
        if self.retain_weight < 0:
            raise ValueError(f"UnlearnConfig.retain_weight={self.retain_weight}: must be >= 0")
        if self.sam_rho < 0:
            raise ValueError(f"UnlearnConfig.sam_rho={self.sam_rho}: must be >= 0")
        if self.retain_projection and (not self.retain_weight or self.sam_rho):
            raise ValueError("UnlearnConfig.retain_projection projects onto the retain text's gradient: set "
                             "retain_weight > 0 (the retain text), and leave sam_rho at 0")
        if self.auto and (not self.auto_alphas or min(self.auto_alphas) <= 0):
            raise ValueError(f"UnlearnConfig.auto_alphas={self.auto_alphas}: give at least one α, all > 0")
        if self.auto_reinforce_rounds < 0 or self.auto_reinforce_factor <= 1:
            raise ValueError("UnlearnConfig.auto_reinforce_rounds must be >= 0 and auto_reinforce_factor > 1")
        if self.teacher_budget <= 0:
            raise ValueError(f"UnlearnConfig.teacher_budget={self.teacher_budget}: must be > 0")
        if not 0.5 <= self.budget_confidence < 1:
            raise ValueError(f"UnlearnConfig.budget_confidence={self.budget_confidence}: must be >= 0.5 and < 1")
        if self.budget_patience < 1:
            raise ValueError(f"UnlearnConfig.budget_patience={self.budget_patience}: must be >= 1")
        if self.auto_eval_steps < 1:
            raise ValueError(f"UnlearnConfig.auto_eval_steps={self.auto_eval_steps}: must be >= 1")
        if self.auto_max_measurements < 0:
            raise ValueError(f"UnlearnConfig.auto_max_measurements={self.auto_max_measurements}: must be >= 0")
        if self.temperature <= 0:
            raise ValueError(f"UnlearnConfig.temperature={self.temperature}: must be > 0")
        if self.suppression_penalty < 0:
            raise ValueError(f"UnlearnConfig.suppression_penalty={self.suppression_penalty}: must be >= 0")
        if self.translations_per_block < 1:
            raise ValueError(f"UnlearnConfig.translations_per_block={self.translations_per_block}: must be >= 1")
        if self.max_length < 2:
            raise ValueError(f"UnlearnConfig.max_length={self.max_length}: must be >= 2")
        if self.logits_chunk_size is not None and self.logits_chunk_size < 1:
            raise ValueError(f"UnlearnConfig.logits_chunk_size={self.logits_chunk_size}: must be >= 1")
        if self.cache_top_k < 1:
            raise ValueError(f"UnlearnConfig.cache_top_k={self.cache_top_k}: must be >= 1")
        if self.unlearn_adapter_name == self.reinforced_adapter_name:
            raise ValueError("UnlearnConfig.unlearn_adapter_name and reinforced_adapter_name must differ")
