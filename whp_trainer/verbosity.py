"""Whether the ``whp`` command shows what the libraries print, and their loggers quieted when it does not. Standard
library only, so that the command quiets them before it imports any library: some log as they are imported
(bitsandbytes, looking for an optional CPU kernel through ``kernels``, on a machine offline)."""

from __future__ import annotations

import logging
import os

VERBOSE_VARIABLE = "WHP_VERBOSE"
THIRD_PARTY_LOGGERS = ("bitsandbytes", "kernels", "transformers", "peft", "trl", "accelerate", "datasets", "torch",
                       "DeepSpeed")


def verbose() -> bool:
    """Whether ``WHP_VERBOSE`` asks for everything the libraries print (any value but empty, 0, false, no)."""
    return os.environ.get(VERBOSE_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")


def quiet_library_loggers() -> None:
    """The libraries' loggers at ERROR, whether they are imported yet or not."""
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
