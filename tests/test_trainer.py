"""UnlearnTrainer on tiny Llama models, with batches built by hand in the format of whp_trainer.collator."""

import copy
import json
from pathlib import Path

import pytest
import torch
from conftest import LORA
from datasets import Dataset
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import TrainerCallback

from whp_trainer import UnlearnConfig, UnlearnTrainer
from whp_trainer.targets import IGNORE_INDEX, distillation_loss, generic_logits, make_targets, suppress


def hand_collate(examples):
    """Right-pad examples holding ``input_ids``, ``translated_input_ids``, ``alignment`` and ``suppress_ids``."""
    width = max(len(e["input_ids"]) for e in examples)
    t_width = max(len(e["translated_input_ids"]) for e in examples)

    def pad(seq, size, value):
        return list(seq) + [value] * (size - len(seq))

    batch = {
        "input_ids": [pad(e["input_ids"], width, 0) for e in examples],
        "attention_mask": [pad([1] * len(e["input_ids"]), width, 0) for e in examples],
        "translated_input_ids": [pad(e["translated_input_ids"], t_width, 0) for e in examples],
        "translated_attention_mask": [pad([1] * len(e["translated_input_ids"]), t_width, 0) for e in examples],
        "alignment": [pad(e["alignment"], width, -1) for e in examples],
        "suppress_ids": [pad(e["suppress_ids"], width, [-1, -1]) for e in examples],
    }
    batch = {key: torch.tensor(value) for key, value in batch.items()}
    ids, alignment = batch["input_ids"], batch["alignment"]
    next_ids = torch.cat([ids[:, 1:], torch.zeros_like(ids[:, :1])], dim=1)
    batch["shift_labels"] = torch.where(alignment >= 0, next_ids, IGNORE_INDEX)
    return batch


def make_example(seed: int, length: int, vocab: int) -> dict:
    """An original block and a translated one where token 2 (an "anchor") became two tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (length,), generator=g).tolist()
    translated = ids[:2] + [7, 8] + ids[3:]
    alignment = [0, 1, 3] + [t + 1 for t in range(3, length - 1)] + [-1]  # last position predicts nothing
    suppress_ids = [[-1, -1]] * 3 + [[7, 8]] * (length - 3)  # rule 2: translation tokens pushed down afterwards
    return {"input_ids": ids, "translated_input_ids": translated, "alignment": alignment, "suppress_ids": suppress_ids}


@pytest.fixture
def dataset(tokenizer):
    return Dataset.from_list([make_example(seed, 10 + seed % 4, len(tokenizer)) for seed in range(16)])


def make_trainer(make_model, reinforced_path, dataset, tmp_path, anchors=None, **config):
    config = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        max_steps=4,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        data_seed=0,
    ) | config
    return UnlearnTrainer(
        model=make_model(),
        reinforced_adapter=reinforced_path,
        peft_config=LoraConfig(**LORA),
        args=UnlearnConfig(**config),
        train_dataset=dataset,
        data_collator=hand_collate,
        anchors=anchors,
    )


def lora_state(model, adapter):
    return {k: v.clone() for k, v in model.state_dict().items() if f".{adapter}." in k}


def expected_targets(base, reinforced_path, batch, mode, alpha=5.0, penalty=5.0, temperature=1.0):
    """Targets recomputed from two separate models: the base, and base + reinforced adapter."""
    with torch.no_grad():
        baseline = base(input_ids=batch["translated_input_ids"], attention_mask=batch["translated_attention_mask"])
        reinforced_model = PeftModel.from_pretrained(copy.deepcopy(base), reinforced_path)
        reinforced = reinforced_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    rows, cols = (batch["shift_labels"] != IGNORE_INDEX).nonzero(as_tuple=True)
    generic = generic_logits(baseline.logits[rows, batch["alignment"][rows, cols]], reinforced.logits[rows, cols], alpha)
    if penalty:
        generic = suppress(generic, batch["suppress_ids"][rows, cols], penalty)
    return make_targets(generic, mode, temperature), rows, cols


@pytest.mark.parametrize("mode", ["argmax", "soft"])
@pytest.mark.parametrize("penalty", [0.0, 5.0])
@pytest.mark.parametrize("chunked", [True, False])
def test_targets_equal_those_of_separate_baseline_and_reinforced_models(
    make_model, reinforced_path, dataset, tmp_path, mode, penalty, chunked
):
    trainer = make_trainer(
        make_model, reinforced_path, dataset, tmp_path, target_mode=mode, suppression_penalty=penalty,
        logits_chunk_size=7, temperature=2.0, chunked_student_loss=chunked,
    )
    seen = {}
    compute_targets = trainer._generic_targets

    def spy(*args):
        seen["targets"] = compute_targets(*args)
        return seen["targets"]

    trainer._generic_targets = spy
    real_loss = distillation_loss
    batch = hand_collate([dataset[i] for i in range(4)])
    loss = trainer.compute_loss(trainer.model, batch)

    targets, rows, cols = expected_targets(make_model(), reinforced_path, batch, mode, penalty=penalty, temperature=2.0)
    if mode == "argmax":
        assert torch.equal(seen["targets"][rows, cols], targets)
        assert torch.all(seen["targets"][batch["shift_labels"] == IGNORE_INDEX] == IGNORE_INDEX)
    else:
        torch.testing.assert_close(seen["targets"], targets, rtol=1e-5, atol=1e-6)
    student = make_model()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    student = student if mode == "argmax" else student[rows, cols]
    expected = real_loss(student.log_softmax(-1), seen["targets"] if mode == "argmax" else targets)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def with_second_translation(batch: dict) -> dict:
    """The batch with a second translation of every block (WHP+ layout: rows k·B + b): the anchor's two tokens
    ``7 8`` become ``9 10``; same alignment and loss positions."""
    second = batch["translated_input_ids"].clone()
    second[second == 7], second[second == 8] = 9, 10
    suppress_ids = batch["suppress_ids"].clone()
    suppress_ids[suppress_ids == 7], suppress_ids[suppress_ids == 8] = 9, 10
    return {
        **batch,
        "translated_input_ids": torch.cat([batch["translated_input_ids"], second]),
        "translated_attention_mask": batch["translated_attention_mask"].repeat(2, 1),
        "alignment": batch["alignment"].repeat(2, 1),
        "suppress_ids": torch.cat([batch["suppress_ids"], suppress_ids]),
    }


@pytest.mark.parametrize("mode", ["argmax", "soft"])
@pytest.mark.parametrize("fused", [False, True])
def test_several_translations_average_their_target_distributions(make_model, reinforced_path, dataset, tmp_path,
                                                                 mode, fused):
    """WHP+: the targets of a block translated twice are the mean of the two translations' softmax(v_generic / τ)
    (its argmax in argmax mode), each translation with its own baseline pass and suppressed tokens."""
    trainer = make_trainer(make_model, reinforced_path, dataset, tmp_path, target_mode=mode, temperature=2.0,
                           logits_chunk_size=5, fused_teacher_pass=fused)
    batch = hand_collate([dataset[i] for i in range(4)])
    both = with_second_translation(batch)
    second = {**both, **{key: both[key][4:] for key in ("translated_input_ids", "translated_attention_mask",
                                                        "alignment", "suppress_ids")}}
    rows, cols = (batch["shift_labels"] != IGNORE_INDEX).nonzero(as_tuple=True)
    expected = [expected_targets(make_model(), reinforced_path, b, "soft", temperature=2.0)[0] for b in (batch, second)]
    mean = (expected[0] + expected[1]) / 2
    assert not torch.allclose(expected[0], expected[1], atol=1e-3)  # the two translations do disagree
    targets = trainer._generic_targets(trainer.model, both, rows, cols)
    if mode == "soft":
        torch.testing.assert_close(targets, mean, rtol=1e-5, atol=1e-6)
    else:
        assert torch.equal(targets[rows, cols], mean.argmax(-1))


@pytest.mark.parametrize("mode", ["argmax", "soft"])
@pytest.mark.parametrize("fused", [False, True])
def test_bootstrapped_positions_take_the_baseline_on_the_original_block(make_model, reinforced_path, dataset,
                                                                         tmp_path, mode, fused):
    """Positions in bootstrap_mask (no translated stand-in) get v_b(original) − α·ReLU(v_r − v_b(original)) with
    their suppressed tokens; every other position keeps its translated target."""
    trainer = make_trainer(make_model, reinforced_path, dataset, tmp_path, target_mode=mode, logits_chunk_size=5,
                           fused_teacher_pass=fused)
    batch = hand_collate([dataset[i] for i in range(4)])
    untranslated = {**batch, "alignment": batch["alignment"].clone(),
                    "bootstrap_mask": torch.zeros_like(batch["input_ids"], dtype=torch.bool)}
    untranslated["alignment"][:, 4:6] = -1  # as if inside a multi-token anchor
    untranslated["bootstrap_mask"][:, 4:6] = True
    rows, cols = (batch["shift_labels"] != IGNORE_INDEX).nonzero(as_tuple=True)
    targets = trainer._generic_targets(trainer.model, untranslated, rows, cols)
    translated = expected_targets(make_model(), reinforced_path, batch, mode)[0]
    original = {**batch, "translated_input_ids": batch["input_ids"],
                "translated_attention_mask": batch["attention_mask"],
                "alignment": torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"])}
    bootstrapped = expected_targets(make_model(), reinforced_path, original, mode)[0]
    inside = (cols >= 4) & (cols < 6)
    got = targets if mode == "soft" else targets[rows, cols]
    torch.testing.assert_close(got[inside], bootstrapped[inside], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[~inside], translated[~inside], rtol=1e-5, atol=1e-6)


def test_training_changes_only_the_unlearning_adapter_and_lowers_the_loss(make_model, reinforced_path, dataset, tmp_path):
    fixed_batch = dataset.select(range(4))
    trainer = make_trainer(make_model, reinforced_path, fixed_batch, tmp_path, max_steps=30, learning_rate=1e-2)
    model = trainer.model
    frozen = {k: v.clone() for k, v in model.state_dict().items() if ".default." not in k}
    student_before = lora_state(model, "default")
    trainable_before = {n for n, p in model.named_parameters() if p.requires_grad}
    batch = hand_collate([dataset[i] for i in range(4)])
    targets, rows, cols = expected_targets(make_model(), reinforced_path, batch, "argmax")

    def agreement():
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return (logits[rows, cols].argmax(-1) == targets).float().mean().item()

    with torch.no_grad():
        first_loss = trainer.compute_loss(model, batch).item()
    agreement_before = agreement()
    trainer.train()

    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items()), "base or reinforced adapter changed"
    assert any(not torch.equal(after[k], v) for k, v in student_before.items()), "the unlearning adapter did not train"
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable_before
    assert model.active_adapter == "default"
    with torch.no_grad():
        assert trainer.compute_loss(model, batch).item() < first_loss
    assert agreement() > agreement_before
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert {"target_changed_fraction", "student_original_token_prob"} <= set(logged[0])
    assert 0.0 <= logged[0]["target_changed_fraction"] <= 1.0


def test_gradient_accumulation_matches_a_single_large_batch(make_model, reinforced_path, dataset, tmp_path):
    common = dict(max_steps=2, learning_rate=1e-2, optim="sgd", lr_scheduler_type="constant")
    accumulated = make_trainer(make_model, reinforced_path, dataset, tmp_path / "a",
                               per_device_train_batch_size=2, gradient_accumulation_steps=4, **common)
    whole = make_trainer(make_model, reinforced_path, dataset, tmp_path / "b", per_device_train_batch_size=8, **common)
    accumulated.train()
    whole.train()
    a, b = lora_state(accumulated.model, "default"), lora_state(whole.model, "default")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)


def test_sharpness_aware_step_takes_the_gradient_at_the_perturbed_weights(make_model, reinforced_path, dataset,
                                                                          tmp_path):
    rho, common = 0.05, dict(max_steps=1, learning_rate=1.0, optim="sgd", lr_scheduler_type="constant", max_grad_norm=0)
    reference = make_trainer(make_model, reinforced_path, dataset, tmp_path / "ref", **common)
    batch = reference._prepare_inputs(next(iter(reference.get_train_dataloader())))
    model = reference.model.train()
    weights = {name: p for name, p in model.named_parameters() if p.requires_grad}
    before = {name: p.detach().clone() for name, p in weights.items()}
    gradient = torch.autograd.grad(reference.compute_loss(model, batch), list(weights.values()))
    norm = torch.sqrt(sum(g.square().sum() for g in gradient))
    with torch.no_grad():
        for p, g in zip(weights.values(), gradient):
            p.add_(rho * g / norm)
    sharp = torch.autograd.grad(reference.compute_loss(model, batch), list(weights.values()))

    trainer = make_trainer(make_model, reinforced_path, dataset, tmp_path / "sam", sam_rho=rho, **common)
    trainer.train()
    after = {name: p.detach() for name, p in trainer.model.named_parameters() if p.requires_grad}
    for (name, start), g_sharp, g_plain in zip(before.items(), sharp, gradient):
        torch.testing.assert_close(after[name], start - g_sharp, rtol=1e-4, atol=1e-6)
    assert any(not torch.allclose(s, g, rtol=1e-3, atol=1e-6) for s, g in zip(sharp, gradient))  # not plain SGD


class StopAfter(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step >= self.step


def test_resumed_run_ends_with_the_same_adapter(make_model, reinforced_path, dataset, tmp_path):
    common = dict(max_steps=6, save_strategy="steps", save_steps=3, learning_rate=1e-2)
    straight = make_trainer(make_model, reinforced_path, dataset, tmp_path / "straight", **common)
    straight.train()

    interrupted = make_trainer(make_model, reinforced_path, dataset, tmp_path / "resumed", **common)
    interrupted.add_callback(StopAfter(3))  # the same schedule as the straight run, cut short like a crash
    interrupted.train()
    checkpoint = tmp_path / "resumed" / "out" / "checkpoint-3"
    assert (checkpoint / "adapter_model.safetensors").exists()
    assert not (checkpoint / "reinforced").exists()  # resume reloads it from where it came from
    resumed = make_trainer(make_model, reinforced_path, dataset, tmp_path / "resumed", **common)
    resumed.train(resume_from_checkpoint=True)
    a, b = lora_state(straight.model, "default"), lora_state(resumed.model, "default")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7)


def test_saved_adapter_loads_with_plain_peft(make_model, reinforced_path, dataset, tmp_path):
    trainer = make_trainer(make_model, reinforced_path, dataset, tmp_path, max_steps=2)
    trainer.train()
    trainer.save_model()
    out = tmp_path / "out"
    assert not (out / "reinforced").exists()
    assert json.loads((out / "whp_reinforced.json").read_text())["source"] == str(Path(reinforced_path).resolve())
    loaded = PeftModel.from_pretrained(make_model(), out)
    batch = hand_collate([dataset[0]])
    with torch.no_grad():
        expected = trainer.model(input_ids=batch["input_ids"]).logits
        torch.testing.assert_close(loaded(input_ids=batch["input_ids"]).logits, expected)


def test_batch_without_alignment_while_anchors_are_configured_is_rejected(make_model, reinforced_path, dataset, tmp_path):
    trainer = make_trainer(make_model, reinforced_path, dataset, tmp_path, anchors={"Harry": ["Jon"]})
    batch = hand_collate([dataset[0]])
    for key in ("translated_input_ids", "translated_attention_mask", "alignment"):
        del batch[key]
    with pytest.raises(ValueError, match="anchors are configured but the batch has no 'alignment'"):
        trainer.compute_loss(trainer.model, batch)


def test_translated_ids_without_alignment_are_rejected(make_model, reinforced_path, dataset, tmp_path):
    trainer = make_trainer(make_model, reinforced_path, dataset, tmp_path)
    batch = hand_collate([dataset[0]])
    del batch["alignment"]
    with pytest.raises(ValueError, match=r"lacks \['alignment'\]"):
        trainer.compute_loss(trainer.model, batch)


def test_reinforced_adapter_of_another_base_is_rejected(make_model, tokenizer, tmp_path, dataset):
    other = get_peft_model(make_model(hidden_size=32), LoraConfig(**LORA))
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match=r"reinforced adapter .*other does not match the base model"):
        make_trainer(make_model, tmp_path / "other", dataset, tmp_path)


def test_unknown_target_mode_is_rejected():
    with pytest.raises(ValueError, match=r"target_mode='topk': expected one of \('argmax', 'soft'\)"):
        UnlearnConfig(output_dir="unused", target_mode="topk")


def test_neither_reinforced_adapter_nor_anchors_is_rejected(make_model, dataset, tmp_path):
    with pytest.raises(ValueError, match="neither a reinforced adapter nor anchors"):
        make_trainer(make_model, None, dataset, tmp_path)


def test_ablations_are_named(make_model, reinforced_path, dataset, tmp_path):
    assert make_trainer(make_model, reinforced_path, dataset, tmp_path).method_variant.startswith(
        "ablation: reinforced bootstrapping only"
    )
    anchors_only = make_trainer(make_model, None, dataset, tmp_path, anchors={"Harry": ["Jon"]})
    assert anchors_only.method_variant.startswith("ablation: anchored terms only")


def test_gradient_checkpointing_gives_the_same_update(make_model, reinforced_path, dataset, tmp_path):
    common = dict(max_steps=2, optim="sgd", lr_scheduler_type="constant")
    plain = make_trainer(make_model, reinforced_path, dataset, tmp_path / "plain", gradient_checkpointing=False, **common)
    checkpointed = make_trainer(make_model, reinforced_path, dataset, tmp_path / "gc", gradient_checkpointing=True, **common)
    plain.train()
    checkpointed.train()
    a, b = lora_state(plain.model, "default"), lora_state(checkpointed.model, "default")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7)


def dequantized_copy(quantized, path):
    """The same model in float32 with every 4-bit weight replaced by its dequantized value."""
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    dense = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    modules = dict(dense.named_modules())
    for name, module in quantized.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
            modules[name].weight.data.copy_(weight.float())
    return dense


def test_4bit_base_gives_the_gradients_of_its_dequantized_weights(make_model, reinforced_path, dataset, tmp_path):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    make_model().save_pretrained(tmp_path / "base")
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32, bnb_4bit_quant_type="nf4")
    quantized = AutoModelForCausalLM.from_pretrained(tmp_path / "base", quantization_config=quantization)
    dense = dequantized_copy(quantized, tmp_path / "base")
    batch = hand_collate([dataset[i] for i in range(4)])
    grads = []
    for base in (quantized, dense):
        torch.manual_seed(0)
        trainer = make_trainer(lambda: base, reinforced_path, dataset, tmp_path / "q")
        trainer.compute_loss(trainer.model, batch).backward()  # teacher passes in eval mode run first
        trainer.model.zero_grad()
        trainer.compute_loss(trainer.model, batch).backward()  # ... and must not corrupt a second step
        grads.append({n: p.grad for n, p in trainer.model.named_parameters() if p.requires_grad})
        card = tmp_path / f"card{len(grads)}"
        card.mkdir()
        trainer._write_model_card(str(card))  # the record says what the adapter learned to correct
        expected = "4-bit nf4 (bitsandbytes)" if base is quantized else None
        assert json.loads((card / "whp_run.json").read_text())["training"]["base_quantization"] == expected
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-5)


def test_8bit_base_unlearns_like_its_dequantized_weights(make_model, reinforced_path, dataset, tmp_path):
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    make_model().save_pretrained(tmp_path / "base")
    quantized = AutoModelForCausalLM.from_pretrained(
        tmp_path / "base", quantization_config=BitsAndBytesConfig(load_in_8bit=True), dtype=torch.float32
    )
    layers = {name: m for name, m in quantized.named_modules() if isinstance(m, bnb.nn.Linear8bitLt)}
    assert layers and all(m.weight.dtype == torch.int8 for m in layers.values())
    int8_before = {name: m.weight.data.clone() for name, m in layers.items()}
    dense = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    dense_modules = dict(dense.named_modules())
    for name, module in layers.items():  # row-wise absmax int8: weight = int8 · SCB / 127
        dense_modules[name].weight.data.copy_(module.weight.data.float() * module.weight.SCB[:, None] / 127)
    batch = hand_collate([dataset[i] for i in range(4)])
    results = []
    for base in (quantized, dense):
        torch.manual_seed(0)
        trainer = make_trainer(lambda: base, reinforced_path, dataset, tmp_path / "q", max_steps=5, target_mode="soft")
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        trainer.model.zero_grad()
        trainer.train()
        with torch.no_grad():
            after = trainer.compute_loss(trainer.model, batch)
        results.append((loss.detach(), grads, after))
    (loss_8bit, grads_8bit, after_8bit), (loss_dense, grads_dense, after_dense) = results
    # int8 matmuls also quantize the activations: agreement to about a percent, not to float precision (soft
    # targets: with argmax targets of this near-uniform tiny model, that noise flips some argmaxes)
    torch.testing.assert_close(loss_8bit, loss_dense, rtol=1e-2, atol=0)
    flat_8bit, flat_dense = (torch.cat([g[n].flatten() for n in sorted(g)]) for g in (grads_8bit, grads_dense))
    assert (flat_8bit - flat_dense).norm() <= 0.02 * flat_dense.norm()  # measured: 0.6 %
    assert after_8bit < 0.97 * loss_8bit and after_8bit == pytest.approx(after_dense.item(), rel=1e-2)
    assert all(torch.equal(m.weight.data, int8_before[name]) for name, m in layers.items())


def test_fused_teacher_pass_gives_the_same_loss(make_model, reinforced_path, dataset, tmp_path):
    batch = hand_collate([dataset[i] for i in range(4)])
    losses = []
    for fused in (False, True):
        trainer = make_trainer(make_model, reinforced_path, dataset, tmp_path, fused_teacher_pass=fused)
        trainer.model.train()
        losses.append(trainer.compute_loss(trainer.model, batch))
        assert trainer.model.training and trainer.model.active_adapter == "default"
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["argmax", "soft"])
def test_cached_targets_train_like_targets_computed_on_the_fly(
    make_model, reinforced_path, dataset, tmp_path, monkeypatch, mode
):
    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    common = dict(num_train_epochs=2, max_steps=-1, optim="sgd", lr_scheduler_type="constant", target_mode=mode,
                  train_sampling_strategy="sequential")
    on_the_fly = make_trainer(make_model, reinforced_path, dataset, tmp_path / "fly", **common)
    on_the_fly.train()
    cached = make_trainer(make_model, reinforced_path, dataset, tmp_path / "cached", cache_targets=True,
                          cache_top_k=400, **common)  # top-k = the whole vocabulary: exactly the soft targets
    cached.train()
    a, b = lora_state(on_the_fly.model, "default"), lora_state(cached.model, "default")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)

    passes = []
    monkeypatch.setattr(UnlearnTrainer, "_teacher_states", lambda *args: passes.append(1))
    again = make_trainer(make_model, reinforced_path, dataset, tmp_path / "again", cache_targets=True,
                         cache_top_k=400, **common)
    again.train()  # a second run with the same settings reads the cache: no teacher pass at all
    assert passes == []
    assert len(list((tmp_path / "hf-datasets" / "whp_targets").glob("whp-targets-*.arrow"))) == 1


def test_every_saved_output_has_the_model_card(make_model, reinforced_path, dataset, tmp_path):
    from huggingface_hub import ModelCard

    trainer = make_trainer(make_model, reinforced_path, dataset, tmp_path, max_steps=2, save_strategy="steps",
                           save_steps=2, anchors={"Harry": ["Jon", "Tom"]}, alpha=3.0)
    trainer.train()
    trainer.save_model()
    for folder in (tmp_path / "out", tmp_path / "out" / "checkpoint-2"):
        card = ModelCard.load(folder / "README.md")
        run = json.loads((folder / "whp_run.json").read_text())  # the record the card is rendered from
        assert run["method"]["alpha"] == 3.0
        assert run["dictionary"]["size"] == 1 and len(run["dictionary"]["hash"]) >= 16
        assert run["reinforced_adapter"] == str(reinforced_path)
        assert "2310.02238" in card.text


@pytest.mark.parametrize("mode,cap,depth", [("argmax", 0.0, None), ("soft", 0.0, None), ("soft", 1.0, None),
                                            ("soft", 1.0, 0.5)])
@pytest.mark.parametrize("num_items_in_batch", [None, 37])
def test_chunked_student_loss_gives_the_loss_and_gradients_of_full_logits(
    make_model, reinforced_path, dataset, tmp_path, mode, cap, depth, num_items_in_batch
):
    from whp_trainer.models import plain_linear_head

    batch = hand_collate([dataset[i] for i in range(4)])
    results = []
    for chunked in (True, False):
        trainer = make_trainer(make_model, reinforced_path, dataset, tmp_path, target_mode=mode, logits_chunk_size=5,
                               chunked_student_loss=chunked, original_cap_weight=cap, original_cap_depth=depth,
                               alpha=20.0)
        assert plain_linear_head(trainer.model) is not None  # the chunked path is taken when asked for
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, batch, num_items_in_batch=num_items_in_batch)
        loss.backward()
        grads = {n: p.grad for n, p in trainer.model.named_parameters() if p.requires_grad}
        results.append((loss.detach(), grads, dict(trainer._metrics["train"])))
    (chunked_loss, chunked_grads, chunked_metrics), (loss, grads, metrics) = results
    torch.testing.assert_close(chunked_loss, loss, rtol=1e-5, atol=1e-7)
    assert chunked_grads.keys() == grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(chunked_grads[name], grads[name], rtol=1e-5, atol=1e-7)
    assert chunked_metrics.keys() == {"target_changed_fraction", "student_original_token_prob"}
    for key, values in metrics.items():
        assert chunked_metrics[key] == pytest.approx(values, rel=1e-5)


@pytest.mark.parametrize("chunked", [False, True])
def test_the_cap_depth_is_measured_from_the_base_reading_the_original_text(
    make_model, reinforced_path, dataset, tmp_path, chunked
):
    """Before any step the student is the base: a depth of 0 leaves the cap nothing to push (the loss is the cap-free
    one), a depth far beyond the target's tail leaves the cap unbounded."""
    batch = hand_collate([dataset[i] for i in range(4)])

    def loss(**config):
        trainer = make_trainer(make_model, reinforced_path, dataset, tmp_path, target_mode="soft", alpha=20.0,
                               chunked_student_loss=chunked, logits_chunk_size=5, **config)
        return trainer.compute_loss(trainer.model, batch).detach()

    without_cap, with_cap = loss(), loss(original_cap_weight=1.0)
    assert with_cap > without_cap + 1e-3  # the teacher puts some original tokens below the base: the cap pushes
    torch.testing.assert_close(loss(original_cap_weight=1.0, original_cap_depth=0.0), without_cap)
    torch.testing.assert_close(loss(original_cap_weight=1.0, original_cap_depth=1e6), with_cap)


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("depth", [None, 1.0])
def test_a_cap_dropped_by_the_stopping_rule_leaves_the_loss_without_it(make_model, reinforced_path, dataset, tmp_path,
                                                                         chunked, depth):
    """`alpha: auto`'s first backtrack sets the trainer's ``cap_weight`` to 0: from then on its loss is the one of a
    trainer configured without the cap."""
    batch = hand_collate([dataset[i] for i in range(4)])

    def loss(drop=False, **config):
        trainer = make_trainer(make_model, reinforced_path, dataset, tmp_path, target_mode="soft", alpha=20.0,
                               chunked_student_loss=chunked, logits_chunk_size=5, **config)
        trainer.cap_weight = 0.0 if drop else trainer.cap_weight
        return trainer.compute_loss(trainer.model, batch).detach()

    capped = dict(original_cap_weight=1.0, original_cap_depth=depth)
    assert loss(**capped) > loss() + 1e-3
    torch.testing.assert_close(loss(drop=True, **capped), loss())
