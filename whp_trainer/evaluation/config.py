"""What `whp evaluate` measures, on how much data and for which roles: `EvaluateConfig` and its checks."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

from .membership import MUSE_K
from .robustness import QUANTIZATIONS

ROLES = ("base", "reinforced", "unlearned")
JUDGES = ("anchors", "llm")


@dataclass
class EvaluateConfig:
    """`whp evaluate`: what is measured, on how much data, for which roles."""

    output_dir: str = field(default="whp-evaluation", metadata={"help": "Where report.json, report.md and plots go."})
    roles: list[str] = field(
        default_factory=lambda: list(ROLES),
        metadata={"help": "Roles to measure among base, reinforced, unlearned (one without its adapter is skipped)."},
    )
    batch_size: int = field(default=8, metadata={"help": "Batch size of every measurement."})
    max_length: int = field(default=512, metadata={"help": "Longest text, in tokens, for perplexities and relearning."})
    max_probes: int = field(default=300, metadata={"help": "Most familiarity probes used (built or loaded)."})
    completions: int = field(
        default=300, metadata={"help": "Probe prompts completed by sampling and judged (the paper: 300); 0 = skip."}
    )
    max_new_tokens: int = field(default=24, metadata={"help": "Length of each sampled completion, in tokens."})
    judge: str = field(
        default="anchors",
        metadata={"help": "'anchors' (anchor terms in the completion) or 'llm' (a model grades it).",
                  "choices": list(JUDGES)},
    )
    judge_url: str | None = field(
        default=None, metadata={"help": "llm judge: URL of an OpenAI-compatible server (…/v1); else the local base."}
    )
    judge_model: str | None = field(default=None, metadata={"help": "llm judge: model name sent to the server."})
    judge_api_key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "llm judge: environment variable holding the API key."}
    )
    memorization_passages: int = field(
        default=100, metadata={"help": "Forget passages for verbatim memorization; 0 = skip."}
    )
    prompt_tokens: int = field(default=32, metadata={"help": "Memorization: tokens of the passage given as prompt."})
    continuation_tokens: int = field(
        default=32, metadata={"help": "Memorization: tokens of the true continuation compared with the model's."}
    )
    retain_texts: int = field(
        default=200, metadata={"help": "Paragraphs of retain text (and as many of forget text) for perplexity; 0: all."}
    )
    lm_eval_tasks: list[str] = field(
        default_factory=list,
        metadata={"help": "lm-evaluation-harness tasks (e.g. arc_challenge piqa; needs lm-eval); empty = skip."},
    )
    lm_eval_limit: int | None = field(default=None, metadata={"help": "lm-eval: examples per task (default: all)."})
    lm_eval_num_fewshot: int | None = field(
        default=None, metadata={"help": "lm-eval: few-shot examples per prompt (default: each task's, zero-shot for "
                                "the paper's six)."}
    )
    lm_eval_include_path: str | None = field(
        default=None, metadata={"help": "lm-eval: a folder of extra task configs (YAML), e.g. tasks on local data."}
    )
    relearn_steps: int = field(
        default=10, metadata={"help": "Relearning probe: fine-tuning steps on forget text; 0 = skip."}
    )
    relearn_learning_rate: float = field(default=1e-4, metadata={"help": "Relearning probe: learning rate."})
    hints: bool = field(default=True, metadata={"help": "Also measure token familiarity with in-context hints."})
    general_text: bool = field(
        default=True,
        metadata={"help": "Also measure the perplexity of the package's general text (14 kinds of modern English, "
                  "at most retain_texts blocks; paragraphs naming an anchored term left out): what unlearning costs "
                  "text unlike both the target and the retain text. False for a model that does not read English."},
    )
    next_token_prompts: dict | str | None = field(
        default=None,
        metadata={"help": "Prompt -> next tokens whose probability is reported, as a YAML mapping or JSON, e.g. "
                  "'{\"Harry Potter studies\": [\" magic\", \" the\"]}'."},
    )
    oracle_model: str | None = field(
        default=None,
        metadata={"help": "A model of the same tokenizer that never read the forget target (MUSE's 'retrain'): "
                  "measured as the 'oracle' column, the reference every forget metric is compared with."},
    )
    holdout_data: str | None = field(
        default=None,
        metadata={"help": "Texts of the same kind as the forget target that no model read (.txt, folder, "
                  ".json/.jsonl): membership AUC (Min-K, Min-K++) of forget vs holdout; PrivLeak with the oracle."},
    )
    membership_texts: int = field(
        default=200, metadata={"help": "Forget and holdout paragraphs (each) for the membership AUC; 0: all."}
    )
    membership_k: float = field(
        default=MUSE_K, metadata={"help": "Share k of least likely tokens in Min-K and Min-K++ membership scores (MUSE: 0.4)."}
    )
    knowledge_qa: str | None = field(
        default=None, metadata={"help": "Questions about the forget target with their answers (.json/.jsonl of "
                                "{question, answer}): MUSE's KnowMem."}
    )
    knowledge_qa_shots: str | None = field(
        default=None,
        metadata={"help": "Few-shot {question, answer} examples put before each question (MUSE's ICL file)."},
    )
    retain_qa: str | None = field(
        default=None, metadata={"help": "Questions about retained knowledge (.json/.jsonl): KnowMem on retain."}
    )
    forget_knowledge: str | None = field(
        default=None,
        metadata={"help": "Knowledge of the forget target (.jsonl/.json/.csv of {question, true_answer, false_answer} "
                  "or {prompt, answer} rows): answer log-likelihood and 2-choice accuracy (goal: the oracle's)."},
    )
    neighbour_knowledge: str | None = field(
        default=None,
        metadata={"help": "Related knowledge that must stay (same formats as --forget_knowledge), e.g. other fantasy "
                  "worlds: its answer log-likelihood should stay within 0.1 nat of the base's; with "
                  "--forget_knowledge, the selectivity (forget drop minus neighbour drop). Default: the package's "
                  "160 general facts, less those naming an anchored term and those alpha auto's stopping rule read."},
    )
    quantizations: list[str] = field(
        default_factory=lambda: list(QUANTIZATIONS),
        metadata={"help": "Robustness: each role merged and reloaded quantized by bitsandbytes (int8, nf4), its forget "
                  "metrics measured again; none = skip.", "choices": [*QUANTIZATIONS, "none"]},
    )
    full_precision_attack: bool = field(
        default=True,
        metadata={"help": "Robustness, when the base is loaded quantized (--load_in_4bit, --load_in_8bit): load it "
                  "unquantized too, measure every adapter on it (the full_precision attack) and quantize each "
                  "adapter merged into it, as whp export writes it. False, for a base whose full-precision weights "
                  "do not fit: neither, and the quantization attacks are skipped (merged into the quantized base, "
                  "an adapter is rounded away and re-quantizing gives that base back)."},
    )
    relearn_data: str | None = field(
        default=None,
        metadata={"help": "Robustness: text about the target that is not the forget text (.txt, folder, .json/.jsonl;"
                  " the benchmarks use held-out passages of the same work): every role relearns on it "
                  "(--relearn_steps) and its forget metrics are measured again."},
    )
    many_shot_passages: int = field(
        default=8,
        metadata={"help": "Robustness: forget passages put in the prompt before each probe and question "
                  "(in-context extraction, fitted to --many_shot_max_tokens); 0 = skip."},
    )
    many_shot_max_tokens: int = field(
        default=1024,
        metadata={"help": "Robustness: a many-shot prompt, passages and question, holds at most this many tokens (and "
                  "never more than the tokenizer's model_max_length)."},
    )
    paraphrased_probes: str | None = field(
        default=None,
        metadata={"help": "Robustness: probes reworded ({prompt, target} .json/.jsonl, as --probes): token "
                  "familiarity on them."},
    )
    knowmem_max_new_tokens: int = field(default=32, metadata={"help": "KnowMem: longest generated answer (MUSE: 32)."})
    teacher_alphas: list[float] = field(
        default_factory=lambda: [5.0],
        metadata={"help": "α values at which the generic-logit teacher v_b − α·ReLU(v_r − v_b) is measured as a "
                  "model (needs the reinforced adapter); empty = skip."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of sampling, passage choice and hints."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow a base model and tokenizer that ship their own code from the Hub."}
    )
    report_to: list[str] = field(
        default_factory=lambda: ["none"],
        metadata={"help": "Trackers to send the results and plots to, as the Trainer's report_to: tensorboard, "
                  "wandb, trackio, … (one or more), all, or none."},
    )
    run_name: str | None = field(default=None, metadata={"help": "The trackers' run name."})
    plots: bool = field(default=True, metadata={"help": "Write PNG plots beside the report."})

    def __post_init__(self):
        if not self.roles or set(self.roles) - set(ROLES) or len(set(self.roles)) != len(self.roles):
            raise ValueError(f"roles={self.roles}: expected distinct roles among {list(ROLES)}")
        if self.judge not in JUDGES:
            raise ValueError(f"judge={self.judge!r}: expected one of {list(JUDGES)}")
        positive = ("batch_size", "max_length", "max_probes", "max_new_tokens", "prompt_tokens", "continuation_tokens",
                    "many_shot_max_tokens")
        for name in positive:
            _check(self, name, getattr(self, name) >= 1, "must be at least 1")
        for name in ("completions", "memorization_passages", "retain_texts", "relearn_steps", "membership_texts",
                     "many_shot_passages"):
            _check(self, name, getattr(self, name) >= 0, "must be 0 (skip) or more")
        _check(self, "lm_eval_limit", self.lm_eval_limit is None or self.lm_eval_limit >= 1, "must be at least 1")
        _check(self, "relearn_learning_rate", self.relearn_learning_rate > 0, "must be positive")
        _check(self, "membership_k", 0 < self.membership_k <= 1, "must be in (0, 1]")
        _check(self, "knowmem_max_new_tokens", self.knowmem_max_new_tokens >= 1, "must be at least 1")
        self.quantizations = [self.quantizations] if isinstance(self.quantizations, str) else list(self.quantizations)
        self.quantizations = [] if self.quantizations == ["none"] else self.quantizations
        _check(self, "quantizations", set(self.quantizations) <= set(QUANTIZATIONS),
               f"expected among {list(QUANTIZATIONS)}")
        _check(self, "teacher_alphas", all(alpha >= 0 for alpha in self.teacher_alphas), "must be >= 0")
        self.next_token_prompts = parsed_next_token_prompts(self.next_token_prompts)
        self.report_to = [self.report_to] if isinstance(self.report_to, str) else list(self.report_to)
        unknown = set(self.report_to) - {"all", "none", *INTEGRATION_TO_CALLBACK}
        _check(self, "report_to", not unknown, f"unknown tracker(s) {sorted(unknown)}; expected among "
               f"{sorted(INTEGRATION_TO_CALLBACK)}, all or none")


def _check(config, name: str, valid: bool, requirement: str) -> None:
    if not valid:
        raise ValueError(f"{name}={getattr(config, name)!r}: {requirement}")


def parsed_next_token_prompts(value: dict | str | None) -> dict[str, list[str]] | None:
    """`next_token_prompts` as prompt -> list of tokens, from a mapping or its JSON (a single token may be a str)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"next_token_prompts: not valid JSON: {error}") from error
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"next_token_prompts={value!r}: expected a mapping prompt -> tokens")
    parsed = {str(prompt): [tokens] if isinstance(tokens, str) else tokens for prompt, tokens in value.items()}
    for prompt, tokens in parsed.items():
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) and t for t in tokens):
            raise ValueError(f"next_token_prompts[{prompt!r}]={tokens!r}: expected a non-empty list of tokens")
    return parsed

