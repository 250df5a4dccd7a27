"""Evaluation of unlearning: familiarity with the forget target, verbatim memorization, knowledge, membership,
retained ability and robustness, measured on tiny or large causal LMs alike, beside an oracle (a model that never
read the target) and the generic-logit teacher; plus the training callback and the ``whp evaluate`` report
(`config`: what is measured; `runner`: the roles measured side by side; `comparison`: against the oracle;
`report`: report.json; `markdown` and `plots`: what is rendered from it).

Each metric takes a causal LM (a ``PeftModel`` is measured with its active adapter), runs batched in eval mode
without grad and restores the model's train/eval mode.
"""

from .familiarity import (
    completion_familiarity,
    next_token_probabilities,
    sample_completions,
    token_familiarity,
)
from .harness import PAPER_TASKS, lm_eval_benchmarks
from .judges import CATEGORIES, DEFAULT_RUBRIC, AnchorJudge, LLMJudge, openai_judge, parse_judgement
from .knowledge import (
    answer_loglikelihood,
    first_mention_probes,
    general_knowledge,
    knowledge_memorization,
    knowledge_scores,
    load_knowledge,
    load_qa,
    two_choice_accuracy,
)
from .membership import membership_auc, privleak
from .memorization import rouge_l, verbatim_memorization
from .probes import build_probes, load_probes, write_probes
from .retain import perplexity
from .robustness import hint_probes, relearning_probe
from .teacher import GenericTeacher

from .callback import FamiliarityCallback  # noqa: E402  (builds on the metrics above)
from .comparison import oracle_comparison  # noqa: E402
from .config import EvaluateConfig  # noqa: E402
from .markdown import markdown_report  # noqa: E402
from .report import write_report  # noqa: E402
from .runner import evaluate_model  # noqa: E402

__all__ = [
    "CATEGORIES",
    "DEFAULT_RUBRIC",
    "PAPER_TASKS",
    "AnchorJudge",
    "EvaluateConfig",
    "FamiliarityCallback",
    "GenericTeacher",
    "LLMJudge",
    "answer_loglikelihood",
    "build_probes",
    "completion_familiarity",
    "evaluate_model",
    "first_mention_probes",
    "general_knowledge",
    "hint_probes",
    "knowledge_memorization",
    "knowledge_scores",
    "lm_eval_benchmarks",
    "load_knowledge",
    "load_probes",
    "load_qa",
    "markdown_report",
    "membership_auc",
    "next_token_probabilities",
    "openai_judge",
    "oracle_comparison",
    "parse_judgement",
    "perplexity",
    "privleak",
    "relearning_probe",
    "rouge_l",
    "sample_completions",
    "token_familiarity",
    "two_choice_accuracy",
    "verbatim_memorization",
    "write_probes",
    "write_report",
]
