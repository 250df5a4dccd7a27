"""Method options beyond the paper (all off by default): retain regularisation and targets that never reinforce
the memorized token."""

import pytest
import torch
from conftest import CORPUS, LORA
from datasets import Dataset
from peft import LoraConfig

from whp_trainer import UnlearnConfig, UnlearnTrainer
from whp_trainer.anchors import AnchorDictionary
from whp_trainer.targets import IGNORE_INDEX, drop_unchanged, retain_kl

ANCHORS = {"Harry": ["Jon"], "Hogwarts": ["Mystic Academy"]}


def test_drop_unchanged_removes_only_the_positions_whose_target_is_the_original_token():
    hard = torch.tensor([[5, 7, IGNORE_INDEX, 9]])
    original = torch.tensor([[5, 8, IGNORE_INDEX, 9]])
    assert drop_unchanged(hard, original).tolist() == [[IGNORE_INDEX, 7, IGNORE_INDEX, IGNORE_INDEX]]


def test_retain_kl_is_zero_for_equal_predictions_and_ignores_masked_positions():
    logits = torch.randn(2, 3, 11)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert retain_kl(logits, logits, mask).item() == pytest.approx(0.0, abs=1e-6)
    other = logits.clone()
    other[0, 2] += torch.randn(11)  # a masked position: no effect
    assert retain_kl(other, logits, mask).item() == pytest.approx(0.0, abs=1e-6)
    other[1, 0] += torch.randn(11)
    assert retain_kl(other, logits, mask).item() > 0


def trainer(make_model, tokenizer, reinforced_path, tmp_path, **options):
    return UnlearnTrainer(
        model=make_model(), reinforced_adapter=reinforced_path, peft_config=LoraConfig(**LORA),
        anchors=AnchorDictionary(ANCHORS), processing_class=tokenizer,
        train_dataset=Dataset.from_dict({"text": CORPUS[:4] * 2}), retain_dataset=CORPUS[4:] if options else None,
        args=UnlearnConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=4,
                           learning_rate=3e-2, report_to=[], use_cpu=True, max_length=32, save_strategy="no",
                           disable_tqdm=True, **options),
    )


def retain_losses(trained) -> dict[str, float]:
    """Both retain losses of the trained student, over all the retain blocks."""
    trained.args.per_device_train_batch_size = len(trained.retain_blocks)
    losses = {}
    for loss in ("kl", "nll"):
        trained.args.retain_loss = loss  # a batch of as many blocks as there are is one whole pass over them
        trained.model.eval()
        with torch.no_grad():
            losses[loss] = trained.retain_loss(trained.model).item()
    return losses


@pytest.mark.parametrize("loss", ["kl", "nll"])
def test_retain_regularisation_keeps_the_retain_loss_it_optimises_lower(make_model, tokenizer, reinforced_path,
                                                                        tmp_path, loss):
    regularised = trainer(make_model, tokenizer, reinforced_path, tmp_path, retain_weight=20.0, retain_loss=loss)
    plain = trainer(make_model, tokenizer, reinforced_path, tmp_path, retain_weight=1e-12)  # same data, no effect
    assert retain_losses(plain)["kl"] == pytest.approx(0.0, abs=1e-6)  # the LoRA adapter starts as the identity
    plain.train()
    regularised.train()
    assert retain_losses(regularised)[loss] < retain_losses(plain)[loss]


def test_retain_weight_without_retain_text_is_refused(make_model, tokenizer, reinforced_path, tmp_path):
    with pytest.raises(ValueError, match="retain_dataset"):
        UnlearnTrainer(model=make_model(), reinforced_adapter=reinforced_path, peft_config=LoraConfig(**LORA),
                       processing_class=tokenizer, args=UnlearnConfig(output_dir=str(tmp_path), retain_weight=1.0))
    with pytest.raises(ValueError, match="retain_loss"):
        UnlearnConfig(output_dir=str(tmp_path), retain_loss="mse")


def knowing_the_corpus(make_model, tokenizer, steps=30):
    """A tiny model trained on the corpus: its predictions match the original next token at many positions."""
    model = make_model()
    batch = tokenizer(CORPUS, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model


def test_skip_unchanged_targets_trains_only_where_the_target_differs(make_model, tokenizer, reinforced_path, tmp_path):
    base = knowing_the_corpus(make_model, tokenizer)
    unlearner = trainer(lambda: base, tokenizer, reinforced_path, tmp_path, skip_unchanged_targets=True)
    batch = unlearner.data_collator([{"text": text} for text in CORPUS[:2]])
    ids, _ = unlearner.compute_targets(batch)
    hard, original = ids[..., 0], batch["shift_labels"]
    changed = (hard != original) & (original != IGNORE_INDEX)
    assert 0 < changed.sum() < (original != IGNORE_INDEX).sum()  # both kinds of positions exist
    loss = unlearner.compute_loss(unlearner.model, batch)
    expected = torch.nn.functional.cross_entropy(
        unlearner.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[changed],
        hard[changed])
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-4)


def test_original_token_cap_pushes_the_original_token_down_to_the_target_in_log_space_never_up():
    from whp_trainer.targets import original_token_cap

    targets = torch.tensor([[0.001, 0.999], [0.5, 0.5]])
    original = torch.tensor([0, 0])
    student = torch.tensor([[0.1, 0.9], [0.1, 0.9]]).log()  # row 0: above the target's tail; row 1: below the target
    expected = (torch.tensor(0.1).log() - torch.tensor(0.001).log()) / 2
    torch.testing.assert_close(original_token_cap(student, targets, original), expected)
    logits = student.clone().requires_grad_(True)
    original_token_cap(torch.log_softmax(logits, -1), targets, original).backward()
    assert logits.grad[0, 0] > 0 and logits.grad[1].abs().sum() == 0  # descent lowers row 0's token; row 1 untouched
    with pytest.raises(ValueError, match="original_cap_weight needs target_mode='soft'"):
        UnlearnConfig(output_dir="x", original_cap_weight=1.0)


def test_a_cap_depth_is_refused_without_the_cap_or_below_zero_and_leaves_older_runs_up_to_date():
    from whp_trainer.pipeline import UNLEARN_ADDED
    from whp_trainer.runs import fingerprint

    soft = dict(output_dir="x", target_mode="soft")
    with pytest.raises(ValueError, match="original_cap_depth bounds the original-token cap"):
        UnlearnConfig(**soft, original_cap_depth=1.0)
    for depth in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="original_cap_depth=.*must be a number >= 0"):
            UnlearnConfig(**soft, original_cap_weight=1.0, original_cap_depth=depth)
    args = UnlearnConfig(**soft, original_cap_weight=1.0)
    before = {key: value for key, value in args.to_dict().items()
              if key not in UNLEARN_ADDED and "logging_dir" not in key and not key.endswith("_token")}
    assert fingerprint(args, added=UNLEARN_ADDED) == fingerprint(before)  # a folder made before the field: up to date
    args.original_cap_depth = 2.0
    assert fingerprint(args, added=UNLEARN_ADDED) != fingerprint(before)
    args.original_cap_depth, args.retain_projection = None, True
    assert fingerprint(args, added=UNLEARN_ADDED) != fingerprint(before)


def test_without_conflict_removes_only_a_conflicting_component():
    from whp_trainer.targets import without_conflict

    keep = [torch.tensor([1.0, 0.0]), None, torch.tensor([0.0])]
    conflicting = [torch.tensor([-2.0, 3.0]), torch.tensor([5.0]), torch.tensor([1.0])]
    projected = without_conflict(conflicting, keep)
    assert [g.tolist() for g in projected] == [[0.0, 3.0], [5.0], [1.0]]  # no part along keep; the rest kept
    agreeing = [torch.tensor([2.0, 3.0]), None, torch.tensor([1.0])]
    assert without_conflict(agreeing, keep) is agreeing


def dot_with_retain_gradient(trainer, projection: bool) -> tuple[float, float]:
    """One training step from the untrained student; its gradient's dot product with the language-modelling gradient
    of the retain batch the projection reads (the first), and that gradient's norm times the step's."""
    trainer.args.retain_projection = projection
    model = trainer.model
    parameters = [p for p in model.parameters() if p.requires_grad]
    trainer.training_step(model, trainer._prepare_inputs(next(iter(trainer.get_train_dataloader()))))
    step = [p.grad.clone() for p in parameters]
    model.zero_grad()
    trainer._retain_served = 0
    keep = torch.autograd.grad(trainer.retain_loss(model, "nll"), parameters)
    dot = sum((g * k).sum() for g, k in zip(step, keep)).item()
    norms = torch.sqrt(sum(g.square().sum() for g in step) * sum(k.square().sum() for k in keep)).item()
    return dot, norms


def test_retain_projection_steps_do_not_raise_the_retain_text_loss_to_first_order(make_model, tokenizer,
                                                                                  reinforced_path, tmp_path):
    def unlearner(projection):  # the retain text is the forget text: forgetting it conflicts with keeping it
        return UnlearnTrainer(
            model=make_model(), reinforced_adapter=reinforced_path, peft_config=LoraConfig(**LORA),
            anchors=AnchorDictionary(ANCHORS), processing_class=tokenizer,
            train_dataset=Dataset.from_dict({"text": CORPUS[:4]}), retain_dataset=CORPUS[:4],
            args=UnlearnConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=1,
                               target_mode="soft", original_cap_weight=1.0, retain_weight=1.0, report_to=[],
                               use_cpu=True, max_length=32, save_strategy="no", retain_projection=projection),
        )

    plain, plain_norms = dot_with_retain_gradient(unlearner(False), False)
    assert plain < -0.05 * plain_norms  # a real conflict (the KL retain loss has no gradient at the start)
    projected, norms = dot_with_retain_gradient(unlearner(True), True)
    assert abs(projected) < 1e-4 * norms


def test_retain_projection_is_refused_without_retain_text_or_with_sam():
    with pytest.raises(ValueError, match="retain_projection projects onto the retain text's gradient"):
        UnlearnConfig(output_dir="x", retain_projection=True)
    with pytest.raises(ValueError, match="retain_projection projects onto the retain text's gradient"):
        UnlearnConfig(output_dir="x", retain_projection=True, retain_weight=1.0, sam_rho=0.05)


def test_whp_plus_and_bootstrapped_positions_train_through_the_default_collator(make_model, tokenizer,
                                                                                reinforced_path, tmp_path):
    """translations_per_block and bootstrap_untranslated reach the default collator and the teacher: a dictionary
    with several translations is translated into as many variants, untrained positions get a loss, and training
    moves the adapter."""
    several = AnchorDictionary({"Harry Potter": ["Jon Smith", "Tom Baker"], "Hogwarts": ["Mystic Academy", "Old Hall"]})
    unlearner = UnlearnTrainer(
        model=make_model(), reinforced_adapter=reinforced_path, peft_config=LoraConfig(**LORA), anchors=several,
        processing_class=tokenizer, train_dataset=Dataset.from_dict({"text": CORPUS[:4] * 2}),
        args=UnlearnConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=3,
                           learning_rate=3e-2, report_to=[], use_cpu=True, max_length=32, save_strategy="no",
                           disable_tqdm=True, target_mode="soft", translations_per_block=2,
                           bootstrap_untranslated=True),
    )
    texts = [text for text in CORPUS if "Harry Potter" in text][:2]
    batch = unlearner.data_collator([{"text": text} for text in texts])
    assert len(batch["translated_input_ids"]) == 2 * len(texts) and batch["bootstrap_mask"].any()
    first, second = (tokenizer.batch_decode(batch["translated_input_ids"][k * len(texts):(k + 1) * len(texts)])
                     for k in range(2))
    assert first != second  # the two variants use different translations
    before = {name: p.clone() for name, p in unlearner.model.named_parameters() if p.requires_grad}
    unlearner.train()
    assert all(torch.isfinite(torch.tensor(log["loss"])) for log in unlearner.state.log_history if "loss" in log)
    assert any(not torch.equal(p, before[name]) for name, p in unlearner.model.named_parameters() if name in before)


def test_spared_common_tokens_are_never_lowered_by_the_targets_and_the_rest_are_the_papers(make_model, tokenizer,
                                                                                           reinforced_path, tmp_path):
    from whp_trainer.targets import commonest_tokens

    options = dict(retain_weight=1.0, target_mode="soft")
    paper = trainer(make_model, tokenizer, reinforced_path, tmp_path, **options)
    spared = trainer(make_model, tokenizer, reinforced_path, tmp_path, **options, spare_common_tokens=0.5)
    assert paper.spared_tokens is None
    assert torch.equal(spared.spared_tokens, commonest_tokens(spared.retain_blocks, 0.5))  # the retain loss's blocks
    inputs = spared._prepare_inputs(next(iter(spared.get_train_dataloader())))
    rows, cols = (inputs["shift_labels"] != IGNORE_INDEX).nonzero(as_tuple=True)
    targets = {name: run._generic_targets(run.accelerator.unwrap_model(run.model), inputs, rows, cols)
               for name, run in (("paper", paper), ("spared", spared))}
    ids = spared.spared_tokens
    # the spared tokens' logits stay at the baseline's while the others' are lowered as before: never less mass
    assert (targets["spared"][:, ids].sum(-1) >= targets["paper"][:, ids].sum(-1) - 1e-6).all()
    assert not torch.allclose(targets["spared"], targets["paper"])
    others = torch.ones(targets["paper"].shape[-1], dtype=torch.bool)
    others[ids] = False
    ratio = targets["spared"][:, others] / targets["paper"][:, others]  # the same up to each position's normaliser
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-4, atol=1e-6)


def test_spare_common_tokens_needs_the_retain_text_and_a_share_below_one():
    from whp_trainer.pipeline import UNLEARN_ADDED
    from whp_trainer.record import beyond_paper
    from whp_trainer.runs import fingerprint

    with pytest.raises(ValueError, match="spare_common_tokens reads the retain text"):
        UnlearnConfig(output_dir="x", spare_common_tokens=0.5)
    for share in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="spare_common_tokens"):
            UnlearnConfig(output_dir="x", retain_weight=1.0, spare_common_tokens=share)
    args = UnlearnConfig(output_dir="x", retain_weight=1.0)
    before = {key: value for key, value in args.to_dict().items()
              if key not in UNLEARN_ADDED and "logging_dir" not in key and not key.endswith("_token")}
    assert fingerprint(args, added=UNLEARN_ADDED) == fingerprint(before)  # runs made before the option: up to date
    args.spare_common_tokens = 0.5
    assert fingerprint(args, added=UNLEARN_ADDED) != fingerprint(before)
    assert beyond_paper(args)["spare_common_tokens"] == 0.5  # the record and the card name it
