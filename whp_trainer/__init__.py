"""Who's Harry Potter unlearning (Eldan & Russinovich, 2023) as a drop-in Hugging Face ``Trainer``.

The public names load lazily, so that ``import whp_trainer`` (and ``whp --help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "UnlearnConfig": "config",
    "UnlearnTrainer": "trainer",
    "AnchorDictionary": "anchors",
    "AnchorSwapCollator": "collator",
    "split_into_blocks": "collator",
    "ReinforceConfig": "reinforce",
    "train_reinforced_adapter": "reinforce",
    "export_merged": "hub",
    "push_to_hub": "hub",
}
__all__ = list(_EXPORTS)

if TYPE_CHECKING:
    from .anchors import AnchorDictionary
    from .collator import AnchorSwapCollator, split_into_blocks
    from .config import UnlearnConfig
    from .hub import export_merged, push_to_hub
    from .reinforce import ReinforceConfig, train_reinforced_adapter
    from .trainer import UnlearnTrainer


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS])
