"""The CPU demo (``whp demo``): an invented saga learnt by a tiny model, then forgotten, in a few minutes.

`saga` generates the texts and pretrains the models; `run` runs the stages on them.
The names below are the ones scripts and tests import from ``whp_trainer.demo``.
"""

from .run import DEMO_LORA, DEMO_TRAINING, RECOMMENDED_SETTING, demo_evaluation_config, run_demo
from .saga import (
    CHARACTERS,
    PROBE_PREFIXES,
    RELATIONS,
    SIZES,
    DemoAssets,
    DemoSize,
    DemoTexts,
    build_demo_assets,
    cache_root,
    familiarity_probes,
    generate_texts,
    one_thread,
    pretrain,
    saga_dictionary,
)

__all__ = [
    "CHARACTERS",
    "DEMO_LORA",
    "DEMO_TRAINING",
    "PROBE_PREFIXES",
    "RECOMMENDED_SETTING",
    "RELATIONS",
    "SIZES",
    "DemoAssets",
    "DemoSize",
    "DemoTexts",
    "build_demo_assets",
    "cache_root",
    "demo_evaluation_config",
    "familiarity_probes",
    "generate_texts",
    "one_thread",
    "pretrain",
    "run_demo",
    "saga_dictionary",
]
