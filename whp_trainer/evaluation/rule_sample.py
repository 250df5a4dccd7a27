"""What a stopping rule read, and what a report reads apart from it.

``alpha: auto``'s stopping rule keeps, of its measurements within budget, the one nearest its targets: of several
noisy readings of its samples (familiarity probes, first mentions, membership's forget and holdout blocks,
forget knowledge rows, neighbour knowledge rows for a budget), the most favourable. Read again on the same items,
the kept weights are flattered by the noise they were chosen on. The
unlearn stage records fingerprints of the items the rule read (never their text); the evaluation reads the others
when at least `UNSEEN_MINIMUM` are left, and otherwise reads all of them and counts those the rule had read.
"""

from __future__ import annotations

import hashlib
import json

UNSEEN_MINIMUM = 32  # items the rule did not read that a report needs to read a signal on them alone


def item_digest(item: str | dict) -> str:
    """A fingerprint of one block of text or one row (a probe, a knowledge row): which items a stopping rule read,
    without them."""
    text = item.strip() if isinstance(item, str) else json.dumps(item, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def unread(items: list, read: set[str] | None) -> list:
    """The ``items`` a report reads a signal on: those whose `item_digest` is not in ``read`` (what the rule read)
    when at least `UNSEEN_MINIMUM` are left; else all of them."""
    unseen = [item for item in items if item_digest(item) not in (read or ())]
    return unseen if len(unseen) >= UNSEEN_MINIMUM else items


def read_again(items: list, read: set[str]) -> int:
    """How many of ``items`` the rule read."""
    return sum(item_digest(item) in read for item in items)
