"""Padding: rows of token ids of different lengths stacked into one batch, and the positions of a padded batch.

The one place padding is written. The collator, the trainer's fused teacher pass, discovery and the evaluation
metrics all pad with these functions, so the pad id, the padding side and the position ids agree everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .targets import IGNORE_INDEX

PADDING_SIDES = ("left", "right")


def pad_token_id(tokenizer) -> int:
    """The tokenizer's padding id, else its end-of-sequence id (Llama tokenizers have no pad token), else 0."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    return 0


def pad_rows(rows: Sequence[Sequence[int]], value: int, side: str = "right") -> tuple[np.ndarray, np.ndarray]:
    """Rows stacked into an int64 ``(B, longest row)`` array filled with ``value``; and the column each row starts at
    (0 when padding on the right)."""
    if side not in PADDING_SIDES:
        raise ValueError(f"padding side={side!r}: expected 'left' or 'right'")
    width = max((len(row) for row in rows), default=0)
    out = np.full((len(rows), width), value, dtype=np.int64)
    offsets = np.array([width - len(row) if side == "left" else 0 for row in rows], dtype=np.int64)
    for index, (row, offset) in enumerate(zip(rows, offsets)):
        out[index, offset : offset + len(row)] = row
    return out, offsets


def padding_mask(rows: Sequence[Sequence[int]], offsets: np.ndarray, width: int) -> np.ndarray:
    """The attention mask of rows padded by [`pad_rows`][whp_trainer.batching.pad_rows]: 1 over each row's real
    tokens, 0 on padding."""
    lengths = np.array([len(row) for row in rows], dtype=np.int64)
    columns = np.arange(width)
    return ((columns >= offsets[:, None]) & (columns < (offsets + lengths)[:, None])).astype(np.int64)


def padded_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, side: str = "right", device=None
) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask``, ``position_ids`` and ``labels`` (``-100`` on padding) of ``sequences``,
    padded on ``side`` with ``pad_id``. Position ids count real tokens only, so both sides give the same logits."""
    ids, offsets = pad_rows(sequences, pad_id, side)
    input_ids = torch.from_numpy(ids)
    attention_mask = torch.from_numpy(padding_mask(sequences, offsets, ids.shape[1]))
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids_from_mask(attention_mask),
        "labels": input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX),
    }
    return {key: value.to(device) for key, value in batch.items()}


def pad_to_width(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """A ``(B, T)`` batch right-padded with zeros (ids under a zero attention mask, or the mask itself) to ``width``
    columns."""
    return torch.nn.functional.pad(tensor, (0, width - tensor.shape[1]))


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens, so a left-padded row sees the same positions as an unpadded one."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
