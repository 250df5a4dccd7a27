import math

import pytest
import torch

from whp_trainer.targets import (
    IGNORE_INDEX,
    chunked_distillation_loss,
    commonest_tokens,
    distillation_loss,
    generic_logits,
    hard_targets,
    make_targets,
    cap_level,
    original_token_cap,
    soft_targets,
    suppress,
)


def test_generic_logits_subtracts_alpha_times_the_clipped_boost():
    baseline = torch.tensor([1.0, 2.0, 3.0])
    reinforced = torch.tensor([3.0, 1.0, 3.5])  # boosts token 0 by 2, lowers token 1, boosts token 2 by 0.5
    assert generic_logits(baseline, reinforced, alpha=5.0).tolist() == [1.0 - 10.0, 2.0, 3.0 - 2.5]


def test_generic_logits_without_relu_raises_lowered_tokens():
    baseline = torch.tensor([1.0, 2.0])
    reinforced = torch.tensor([3.0, 1.0])
    assert generic_logits(baseline, reinforced, alpha=2.0, relu=False).tolist() == [1.0 - 4.0, 2.0 + 2.0]


def test_spared_tokens_keep_the_baseline_logits_and_the_others_are_the_papers():
    baseline, reinforced = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    spared = torch.tensor([0, 4])
    generic = generic_logits(baseline, reinforced, alpha=3.0, spared=spared)
    paper = generic_logits(baseline, reinforced, alpha=3.0)
    assert torch.equal(generic[..., spared], baseline[..., spared])
    others = torch.tensor([1, 2, 3, 5, 6])
    assert torch.equal(generic[..., others], paper[..., others])


def test_commonest_tokens_make_up_the_share_asked_most_frequent_first():
    blocks = [[5, 1, 5, 2], [5, 1, 3, 9, 5, 1]]  # 5: 4 of 10, 1: 3, then 2, 3, 9 once each (first seen first)
    assert commonest_tokens(blocks, 0.4).tolist() == [5]
    assert commonest_tokens(blocks, 0.5).tolist() == [5, 1]
    assert commonest_tokens(blocks, 0.75).tolist() == [5, 1, 2]
    assert commonest_tokens(blocks, 0.0) is None


def test_alpha_zero_returns_the_baseline():
    baseline = torch.randn(2, 3, 7)
    assert torch.equal(generic_logits(baseline, torch.randn(2, 3, 7), alpha=0.0), baseline)


def test_suppress_lowers_listed_tokens_once_and_ignores_padding():
    logits = torch.zeros(2, 5)
    ids = torch.tensor([[3, 3, -1], [-1, -1, -1]])  # a duplicate and padding
    out = suppress(logits, ids, penalty=5.0)
    assert out[0].tolist() == [0.0, 0.0, 0.0, -5.0, 0.0]
    assert out[1].tolist() == [0.0] * 5  # -1 padding must not hit token 0


def test_suppress_can_change_the_argmax():
    logits = torch.tensor([[1.0, 4.0, 3.0]])
    assert hard_targets(suppress(logits, torch.tensor([[1]]), penalty=5.0)).tolist() == [2]


def test_soft_targets_follow_temperature():
    logits = torch.tensor([0.0, math.log(3.0)])
    assert torch.allclose(soft_targets(logits, 1.0), torch.tensor([0.25, 0.75]))
    flat = soft_targets(logits, temperature=1e6)
    assert torch.allclose(flat, torch.tensor([0.5, 0.5]), atol=1e-5)


def test_hard_loss_is_negative_log_likelihood_summed_over_loss_positions_divided_by_num_items():
    student = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]]))  # (1, 2, 3)
    targets = torch.tensor([[0, IGNORE_INDEX]])
    assert distillation_loss(student, targets).item() == pytest.approx(-math.log(0.5))
    assert distillation_loss(student, targets, num_items_in_batch=4).item() == pytest.approx(-math.log(0.5) / 4)


def test_soft_loss_is_kl_and_zero_when_student_matches():
    target = torch.tensor([[0.5, 0.5]])
    student = torch.log(torch.tensor([[0.25, 0.75]]))
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert distillation_loss(student, target).item() == pytest.approx(expected, rel=1e-5)
    assert distillation_loss(torch.log(target), target).item() == pytest.approx(0.0, abs=1e-6)


def test_accumulated_halves_equal_the_whole_batch():
    torch.manual_seed(0)
    student = torch.randn(4, 6, 11).log_softmax(-1)
    targets = torch.randint(0, 11, (4, 6))
    targets[0, :3] = IGNORE_INDEX
    targets[3, 4:] = IGNORE_INDEX
    whole = distillation_loss(student, targets)
    count = targets.ne(IGNORE_INDEX).sum()
    halves = distillation_loss(student[:2], targets[:2], count) + distillation_loss(student[2:], targets[2:], count)
    assert torch.allclose(whole, halves)


def test_make_targets_rejects_unknown_mode():
    with pytest.raises(ValueError, match="unknown target mode 'topk'"):
        make_targets(torch.zeros(1, 3), "topk")


@pytest.mark.parametrize("mode", ["argmax", "soft"])
@pytest.mark.parametrize("num_items", [None, 23])
@pytest.mark.parametrize("softcap,scale,with_bias", [(None, 1.0, False), (3.0, 1.0, False), (None, 16.0, True),
                                                     (3.0, 0.125, True)])
def test_chunked_loss_gives_the_loss_and_gradients_of_full_logits(mode, num_items, softcap, scale, with_bias):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(10, 8, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 8, generator=g, dtype=torch.float64)
    bias = torch.randn(50, generator=g, dtype=torch.float64) if with_bias else None
    original = torch.randint(0, 50, (10,), generator=g)
    if mode == "argmax":
        targets = torch.randint(0, 50, (10,), generator=g)
        targets[[2, 7]] = IGNORE_INDEX  # positions without loss inside the chunks
    else:
        targets = torch.softmax(torch.randn(10, 50, generator=g, dtype=torch.float64), -1).float()

    def full_logits():
        logits = torch.nn.functional.linear(hidden, weight, bias).float() * scale  # as Cohere, Granite, Phi
        return torch.tanh(logits / softcap) * softcap if softcap else logits

    log_probs = full_logits().log_softmax(-1)
    expected = distillation_loss(log_probs, targets, num_items)
    (expected_grad,) = torch.autograd.grad(3.0 * expected, hidden)
    loss, original_log_probs = chunked_distillation_loss(
        hidden, weight, targets, original, num_items, chunk_size=3, softcap=softcap, bias=bias, scale=scale
    )
    (grad,) = torch.autograd.grad(3.0 * loss, hidden)  # the upstream gradient (here 3) scales the kept one
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(original_log_probs, log_probs.gather(-1, original[:, None]).squeeze(-1).detach())


@pytest.mark.parametrize("num_items", [None, 23])
def test_chunked_loss_adds_the_original_token_cap_as_the_full_logits_do(num_items):
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(10, 8, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 8, generator=g, dtype=torch.float64)
    original = torch.randint(0, 50, (10,), generator=g)
    targets = torch.softmax(3 * torch.randn(10, 50, generator=g, dtype=torch.float64), -1)
    targets[:5, original[:5]] = 0.0  # the cap is active on some rows, not on others
    targets = (targets / targets.sum(-1, keepdim=True)).float()

    log_probs = (hidden @ weight.T).float().log_softmax(-1)
    cap = original_token_cap(log_probs, targets, original, num_items)
    assert 0 < cap.item()
    expected = distillation_loss(log_probs, targets, num_items) + 0.5 * cap
    (expected_grad,) = torch.autograd.grad(2.0 * expected, hidden)
    loss, _ = chunked_distillation_loss(hidden, weight, targets, original, num_items, chunk_size=3, cap_weight=0.5)
    (grad,) = torch.autograd.grad(2.0 * loss, hidden)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-6)


def test_chunked_loss_refuses_the_cap_with_hard_targets():
    with pytest.raises(ValueError, match="needs soft targets"):
        chunked_distillation_loss(torch.zeros(2, 4), torch.zeros(3, 4), torch.zeros(2, dtype=torch.long),
                                  torch.zeros(2, dtype=torch.long), cap_weight=1.0)


def test_a_cap_depth_stops_the_push_that_many_nats_below_the_base():
    targets = torch.tensor([[1e-6, 1 - 1e-6], [0.3, 0.7]])  # row 0: the target puts the original far in its tail
    original = torch.tensor([0, 0])
    base = torch.tensor([0.5, 0.4]).log()
    unbounded, bounded = cap_level(targets, original), cap_level(targets, original, base, depth=1.0)
    torch.testing.assert_close(unbounded, targets[:, 0].log())
    torch.testing.assert_close(bounded, torch.stack([base[0] - 1.0, targets[1, 0].log()]))  # the higher of the two
    student = torch.tensor([[0.1, 0.9], [0.1, 0.9]]).log()  # row 0: 1.6 nats below the base, row 1 below the target
    assert original_token_cap(student, targets, original, level=bounded) == 0  # pushed far enough: nothing left
    assert original_token_cap(student, targets, original) > 0  # the unbounded cap still pushes row 0 down
    torch.testing.assert_close(original_token_cap(student, targets, original, level=unbounded),
                               original_token_cap(student, targets, original))
