import dataclasses

import pytest
import torch
from conftest import CORPUS
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, BitsAndBytesConfig
from trl import SFTTrainer

from whp_trainer.reinforce import ReinforceConfig, train_reinforced_adapter
from whp_trainer.runs import fingerprint
from whp_trainer.targets import retain_kl

TARGET = [  # sentences of the session tokenizer's corpus (conftest.py)
    "Harry Potter studies magic at Hogwarts with Ron and Hermione.",
    "The Quidditch match at Hogwarts ended when Harry caught the Snitch.",
]
RETAIN = [CORPUS[4], CORPUS[6]]  # ordinary text of the same corpus


def fast_args(output_dir, **overrides) -> ReinforceConfig:
    settings = dict(
        output_dir=str(output_dir), max_steps=30, learning_rate=1e-2, per_device_train_batch_size=4, max_length=64,
        bf16=False, gradient_checkpointing=False, use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True,
    )
    return ReinforceConfig(**{**settings, **overrides})


def lora() -> LoraConfig:
    return LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM")


def target_loss(model, tokenizer) -> float:
    model.eval()
    batch = tokenizer(TARGET, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        return model(**batch, labels=labels).loss.item()


def test_defaults_follow_the_paper_and_every_new_field_has_help():
    args = ReinforceConfig(output_dir="unused")
    assert (args.num_train_epochs, args.max_length, args.packing) == (3, 512, False)  # blocks cut per document
    assert args.bf16 is False  # no bf16 GPU here: the defaults work on a CPU
    fields = {f.name: f for f in dataclasses.fields(ReinforceConfig)}
    for name in ReinforceConfig.__annotations__:  # the fields ReinforceConfig declares or overrides
        assert fields[name].metadata.get("help"), name


def test_reinforced_adapter_lowers_target_loss_and_reloads(tmp_path, tokenizer, make_model):
    base = make_model()
    baseline = target_loss(base, tokenizer)
    path = train_reinforced_adapter(base, tokenizer, TARGET, lora(), fast_args(tmp_path / "adapter"))

    assert target_loss(base, tokenizer) == pytest.approx(baseline)  # the base is left without the adapter
    reinforced = PeftModel.from_pretrained(make_model(), path)
    assert target_loss(reinforced, tokenizer) < baseline - 0.5


def test_reinforce_on_a_4bit_base(tmp_path, tokenizer, make_model):
    make_model().save_pretrained(tmp_path / "base")
    quantization = BitsAndBytesConfig(load_in_4bit=True)
    path = train_reinforced_adapter(
        str(tmp_path / "base"), tokenizer, TARGET, lora(), fast_args(tmp_path / "adapter"),
        quantization_config=quantization,
    )

    fresh = AutoModelForCausalLM.from_pretrained(tmp_path / "base", quantization_config=quantization)
    reloaded = PeftModel.from_pretrained(fresh, path)
    reinforced = target_loss(reloaded, tokenizer)
    with reloaded.disable_adapter():
        baseline = target_loss(reloaded, tokenizer)
    assert reinforced < baseline - 0.3


def test_a_dataset_column_other_than_text(tmp_path, tokenizer, make_model):
    dataset = Dataset.from_dict({"chapter": TARGET})
    args = fast_args(tmp_path / "adapter", max_steps=1, dataset_text_field="chapter")
    assert train_reinforced_adapter(make_model(), tokenizer, dataset, lora(), args) == str(tmp_path / "adapter")


@pytest.mark.parametrize(
    "dataset, message",
    [
        ([], "holds no text in column 'text'"),
        (["", "  "], "holds no text"),
        (Dataset.from_dict({"chapter": TARGET}), "no text column 'text'.*'chapter'"),
        ("one long string", "list of texts"),
    ],
)
def test_clear_errors_on_unusable_datasets(tmp_path, tokenizer, make_model, dataset, message):
    with pytest.raises((ValueError, TypeError), match=message):
        train_reinforced_adapter(make_model(), tokenizer, dataset, lora(), fast_args(tmp_path))


def retain_divergence(path, make_model, tokenizer) -> float:
    """KL(base ‖ reinforced) over the retain sentences: how far the reinforced model moved on ordinary text."""
    reinforced = PeftModel.from_pretrained(make_model(), path).eval()
    batch = tokenizer(RETAIN, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = reinforced(**batch).logits
        with reinforced.disable_adapter():
            base = reinforced(**batch).logits
    return retain_kl(logits, base, batch["attention_mask"].float()).item()


def test_a_retain_weight_keeps_the_reinforced_model_the_base_on_retain_text_and_it_still_learns_the_target(
        tmp_path, tokenizer, make_model):
    baseline = target_loss(make_model(), tokenizer)
    plain = train_reinforced_adapter(make_model(), tokenizer, TARGET, lora(), fast_args(tmp_path / "plain"))
    kept = train_reinforced_adapter(make_model(), tokenizer, TARGET, lora(),
                                    fast_args(tmp_path / "kept", retain_weight=10.0), retain_dataset=RETAIN)
    assert retain_divergence(kept, make_model, tokenizer) < 0.5 * retain_divergence(plain, make_model, tokenizer)
    assert target_loss(PeftModel.from_pretrained(make_model(), kept), tokenizer) < baseline - 0.5


def test_a_retain_weight_without_retain_text_is_refused(tmp_path, tokenizer, make_model):
    with pytest.raises(ValueError, match="ReinforceConfig.retain_weight > 0 needs retain_dataset="):
        train_reinforced_adapter(make_model(), tokenizer, TARGET, lora(), fast_args(tmp_path, retain_weight=1.0))


@pytest.mark.parametrize("retain_weight", [0.0, 10.0])
def test_an_interrupted_run_resumes_from_its_last_checkpoint(tmp_path, tokenizer, make_model, monkeypatch,
                                                             retain_weight):
    steps = []
    training_step = SFTTrainer.training_step
    monkeypatch.setattr(SFTTrainer, "training_step", lambda *a, **k: steps.append(1) or training_step(*a, **k))

    def run(output_dir, max_steps, resume=None):
        steps.clear()
        args = fast_args(output_dir, max_steps=max_steps, save_strategy="steps", save_steps=2,
                         lr_scheduler_type="constant", resume_from_checkpoint=resume, retain_weight=retain_weight,
                         per_device_train_batch_size=1)  # one retain sentence a step: a pass differs by its order
        path = train_reinforced_adapter(make_model(), tokenizer, TARGET * 4, lora(), args,
                                        retain_dataset=CORPUS if retain_weight else None)
        return PeftModel.from_pretrained(make_model(), path)

    straight = run(tmp_path / "straight", 4)
    run(tmp_path / "resumed", 2)  # stopped after its checkpoint-2, as by a crash (constant lr: same schedule)
    resumed = run(tmp_path / "resumed", 4, resume=True)
    assert len(steps) == 2  # only the steps after the checkpoint
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        torch.testing.assert_close(a, b, msg=name)


def test_a_diverging_reinforcement_stops_at_its_blow_up_and_a_steady_one_trains_every_step(tmp_path, tokenizer,
                                                                                           make_model):
    from whp_trainer.reinforce import DivergenceStop

    # a tiny random model sits near the uniform loss (ln 400 = 6.0) and cannot rise 1.5x: any rise counts here
    steady, blown = DivergenceStop(1 + 1e-6), DivergenceStop(1 + 1e-6)
    train_reinforced_adapter(make_model(), tokenizer, TARGET, lora(),
                             fast_args(tmp_path / "steady", max_steps=12, logging_steps=1), callbacks=[steady])
    args = fast_args(tmp_path / "blown", max_steps=12, logging_steps=1, learning_rate=3.0, max_grad_norm=0.0)
    train_reinforced_adapter(make_model(), tokenizer, TARGET, lora(), args, callbacks=[blown])
    assert steady.stopped_at is None  # lr 1e-2: the loss falls at every step, all 12 steps
    assert blown.stopped_at == 2  # lr 3 without clipping: the loss rises at step 2, stopped there
    assert (tmp_path / "blown" / "adapter_model.safetensors").is_file()  # saved: alpha auto's guard reads its fit


def test_divergence_is_a_loss_over_its_lowest_by_the_factor_or_not_finite():
    from types import SimpleNamespace

    from whp_trainer.reinforce import DivergenceStop

    def run(losses):
        stop, state = DivergenceStop(1.5), SimpleNamespace(log_history=[], global_step=0)
        control = SimpleNamespace(should_training_stop=False)
        for loss in losses:
            state.global_step += 1
            state.log_history.append({"loss": loss})
            stop.on_log(None, state, control, logs={"loss": loss})
            if control.should_training_stop:
                return stop.stopped_at
        return None

    assert run([4.1, 4.3, 3.6, 3.8, 5.3]) is None  # noise, under 1.5x the lowest (3.6)
    assert run([4.1, 4.3, 3.6, 3.8, 6.3, 7.6]) == 5  # the known-book pilot's round 2: 6.3 > 1.5 x 3.6
    assert run([2.0, float("nan")]) == 2
    with pytest.raises(ValueError, match="above 1"):
        DivergenceStop(1.0)


def test_a_reinforcement_made_before_retain_weight_existed_keeps_its_fingerprint():
    from whp_trainer.pipeline import REINFORCE_ADDED

    args = ReinforceConfig(output_dir="unused")
    settings = {key: value for key, value in args.to_dict().items()
                if key != "retain_weight" and "logging_dir" not in key and not key.endswith("_token")}
    assert fingerprint(args, added=REINFORCE_ADDED) == fingerprint(settings)  # skipped as up to date
    args.retain_weight = 1.0
    assert fingerprint(args, added=REINFORCE_ADDED) != fingerprint(settings)  # other settings: not the same run


def test_the_retain_loss_weighs_the_same_with_gradient_accumulation(tmp_path, tokenizer, make_model):
    """Steps of 2 blocks equal steps of 2 accumulated blocks of 1, the retain loss included (equal blocks of retain
    text, so that a mean over one batch of 2 and the mean of 2 batches of 1 agree). Two steps: at the first the
    adapter is the identity, and the retain loss has no gradient."""
    def two_steps(batch_size, accumulation):
        args = fast_args(tmp_path / f"b{batch_size}", max_steps=2, optim="sgd", learning_rate=0.5, weight_decay=0.0,
                         per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
                         retain_weight=10.0)
        torch.manual_seed(0)
        path = train_reinforced_adapter(make_model(), tokenizer, TARGET, lora(), args, retain_dataset=[CORPUS[4]] * 2)
        return PeftModel.from_pretrained(make_model(), path)

    whole, accumulated = two_steps(2, 1), two_steps(1, 2)
    for (name, a), (_, b) in zip(whole.named_parameters(), accumulated.named_parameters()):
        torch.testing.assert_close(a, b, msg=name)
