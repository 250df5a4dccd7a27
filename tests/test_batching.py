"""Padding (`whp_trainer.batching`): the one helper the collator, the trainer, discovery and the metrics share."""

from types import SimpleNamespace

import pytest
import torch

from whp_trainer.batching import pad_rows, pad_token_id, padded_batch


@pytest.mark.parametrize("pad, eos, expected", [(0, 5, 0), (3, None, 3), (None, 5, 5), (None, None, 0)])
def test_pad_token_id_keeps_a_pad_id_of_zero_and_falls_back_to_the_end_id(pad, eos, expected):
    assert pad_token_id(SimpleNamespace(pad_token_id=pad, eos_token_id=eos)) == expected


@pytest.mark.parametrize("side", ["left", "right"])
def test_each_padded_row_gets_the_logits_it_gets_alone(make_model, side):
    model = make_model().eval()
    rows = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    batch = padded_batch(rows, pad_id=0, side=side)
    labels = batch.pop("labels")
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        logits = model(**batch).logits
        for row, ids in enumerate(rows):
            alone = model(torch.tensor([ids])).logits[0]
            torch.testing.assert_close(logits[row][real[row]], alone, rtol=1e-4, atol=1e-5)
    assert real.sum(1).tolist() == [5, 2, 3] and (batch["input_ids"][~real] == 0).all()
    assert (labels[~real] == -100).all() and torch.equal(labels[real], batch["input_ids"][real])


def test_an_unknown_padding_side_is_refused():
    with pytest.raises(ValueError, match="'center'"):
        pad_rows([[1, 2]], 0, side="center")
