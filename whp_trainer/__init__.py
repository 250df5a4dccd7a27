"""Who's Harry Potter unlearning (Eldan & Russinovich, 2023) as a drop-in Hugging Face ``Trainer``.

The package's job is to name the public API: ``from whp_trainer import UnlearnTrainer, AnchorDictionary, ...``, as
with TRL. The names load lazily, from the module that defines them, on first use, so that ``import whp_trainer``
(and ``whp --help``) imports neither torch nor transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# module (or sub-package) → the public names it defines; keep the TYPE_CHECKING imports below in step
_import_structure = {
    "anchors": ["AnchorDictionary"],
    "chat": ["EndpointChat", "LocalChat"],
    "collator": ["AnchorSwapCollator", "split_into_blocks"],
    "config": ["UnlearnConfig"],
    "data": ["load_texts"],
    "discover": ["Candidate", "boosted_expressions", "candidates_from_llm", "merge_candidates", "write_candidates"],
    "evaluation": [
        "EvaluateConfig",
        "FamiliarityCallback",
        "answer_loglikelihood",
        "build_probes",
        "completion_familiarity",
        "evaluate_model",
        "knowledge_memorization",
        "load_knowledge",
        "load_probes",
        "perplexity",
        "privleak",
        "relearning_probe",
        "token_familiarity",
        "two_choice_accuracy",
        "verbatim_memorization",
        "write_report",
    ],
    "hub": ["export_merged", "push_to_hub"],
    "reinforce": ["ReinforceConfig", "train_reinforced_adapter"],
    "trainer": ["UnlearnTrainer"],
}
_MODULE_OF = {name: module for module, names in _import_structure.items() for name in names}
__all__ = sorted(_MODULE_OF)

if TYPE_CHECKING:
    from .anchors import AnchorDictionary
    from .chat import EndpointChat, LocalChat
    from .collator import AnchorSwapCollator, split_into_blocks
    from .config import UnlearnConfig
    from .data import load_texts
    from .discover import Candidate, boosted_expressions, candidates_from_llm, merge_candidates, write_candidates
    from .evaluation import (
        EvaluateConfig,
        FamiliarityCallback,
        answer_loglikelihood,
        build_probes,
        completion_familiarity,
        evaluate_model,
        knowledge_memorization,
        load_knowledge,
        load_probes,
        perplexity,
        privleak,
        relearning_probe,
        token_familiarity,
        two_choice_accuracy,
        verbatim_memorization,
        write_report,
    )
    from .hub import export_merged, push_to_hub
    from .reinforce import ReinforceConfig, train_reinforced_adapter
    from .trainer import UnlearnTrainer


def __getattr__(name: str):
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *__all__})
