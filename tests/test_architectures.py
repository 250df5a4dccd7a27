"""The package on the causal LMs users load with ``AutoModelForCausalLM``: tiny random configs of 20 architectures,
their LM heads scaled so that soft-capping (Gemma 2/3), logit scales (Cohere ×16, Granite ÷8) and head biases (Phi)
all show. Every role's logits, the student loss and its gradients must be those of the model's own forward, and the
default LoRA configuration must train, save and reload on each."""

import json
import logging

import pytest
import torch
import transformers as hf
from conftest import CORPUS
from datasets import Dataset
from peft import LoraConfig, PeftModel, get_peft_model

from whp_trainer import UnlearnConfig, UnlearnTrainer, models
from whp_trainer.batching import position_ids_from_mask
from whp_trainer.models import (
    BASELINE,
    final_hidden_states,
    logits_from_states,
    logits_head,
    plain_linear_head,
    role_logits,
    using_adapter,
)
from whp_trainer.targets import IGNORE_INDEX, chunked_distillation_loss

DECODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=256)
ARCHITECTURES = {  # name -> (config class, model class, config options); no dropout: losses compared across forwards
    "llama": (hf.LlamaConfig, hf.LlamaForCausalLM, dict(DECODER, tie_word_embeddings=False)),
    "llama-tied": (hf.LlamaConfig, hf.LlamaForCausalLM, dict(DECODER, tie_word_embeddings=True)),
    "mistral": (hf.MistralConfig, hf.MistralForCausalLM, DECODER),
    "qwen2": (hf.Qwen2Config, hf.Qwen2ForCausalLM, DECODER),
    "qwen3": (hf.Qwen3Config, hf.Qwen3ForCausalLM, dict(DECODER, head_dim=8)),
    "gemma": (hf.GemmaConfig, hf.GemmaForCausalLM, dict(DECODER, head_dim=8)),
    "gemma2": (hf.Gemma2Config, hf.Gemma2ForCausalLM, dict(DECODER, head_dim=8, final_logit_softcapping=2.0)),
    "gemma3": (hf.Gemma3TextConfig, hf.Gemma3ForCausalLM, dict(DECODER, head_dim=8, final_logit_softcapping=2.0)),
    "phi3": (hf.Phi3Config, hf.Phi3ForCausalLM, DECODER),
    "phi": (hf.PhiConfig, hf.PhiForCausalLM, DECODER),  # its LM head has a bias
    "gpt2": (hf.GPT2Config, hf.GPT2LMHeadModel,
             dict(n_embd=32, n_layer=1, n_head=4, n_positions=256, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)),
    "gpt_neox": (hf.GPTNeoXConfig, hf.GPTNeoXForCausalLM,
                 dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                      max_position_embeddings=256)),
    "opt": (hf.OPTConfig, hf.OPTForCausalLM,
            dict(hidden_size=32, ffn_dim=64, num_hidden_layers=1, num_attention_heads=4, word_embed_proj_dim=32,
                 max_position_embeddings=256, dropout=0.0)),
    "falcon": (hf.FalconConfig, hf.FalconForCausalLM, dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4)),
    "olmo2": (hf.Olmo2Config, hf.Olmo2ForCausalLM, DECODER),
    "stablelm": (hf.StableLmConfig, hf.StableLmForCausalLM, DECODER),
    "starcoder2": (hf.Starcoder2Config, hf.Starcoder2ForCausalLM, DECODER),
    "bloom": (hf.BloomConfig, hf.BloomForCausalLM, dict(hidden_size=32, n_layer=1, n_head=4)),
    "cohere": (hf.CohereConfig, hf.CohereForCausalLM, dict(DECODER, logit_scale=16.0)),
    "granite": (hf.GraniteConfig, hf.GraniteForCausalLM, dict(DECODER, logits_scaling=8.0)),
}
POST_PROCESSED = {"gemma2", "gemma3", "cohere", "granite"}  # logits are not the LM head's output
WITHOUT_PEFT_DEFAULT = {"phi3", "olmo2", "starcoder2", "cohere", "granite"}  # PEFT names no LoRA targets for these
HEAD_SCALE = 20.0  # logits of tens: the soft cap of 2 and the scales change them a lot


def tiny_model(name: str, tokenizer, seed: int = 0):
    config_class, model_class, options = ARCHITECTURES[name]
    config = config_class(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **options)
    torch.manual_seed(seed)
    model = model_class(config)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(HEAD_SCALE)
        if getattr(model.get_output_embeddings(), "bias", None) is not None:
            model.get_output_embeddings().bias.normal_(std=3.0)
    return model


def with_reinforced_adapter(model):
    """The base with a random (non-zero) frozen adapter named "reinforced" on every linear layer."""
    torch.manual_seed(1)
    config = LoraConfig(r=2, lora_alpha=4, target_modules="all-linear", init_lora_weights=False)
    return get_peft_model(model, config, adapter_name="reinforced")


def make_trainer(name, tokenizer, tmp_path, peft_model=None, **config):
    config = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=3, logging_steps=1,
                  save_strategy="no", report_to=[], use_cpu=True, learning_rate=1e-2, max_length=24,
                  logits_chunk_size=5) | config
    return UnlearnTrainer(
        model=peft_model or with_reinforced_adapter(tiny_model(name, tokenizer)),
        peft_config=LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0),  # PEFT's or whp's default targets
        args=UnlearnConfig(**config),
        processing_class=tokenizer,
        anchors={"Harry": ["Jon"], "Hogwarts": ["Mystic Academy"]},
        train_dataset=Dataset.from_dict({"text": CORPUS}),
    )


def left_padded(tokenizer, texts):
    rows = [tokenizer(text)["input_ids"][:12] for text in texts]
    width = max(map(len, rows))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(row)) + row for row in rows])
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
    return ids, mask, rows


def own_logits(model, adapter, ids, mask):
    """``model(...).logits`` of one role, asked of PEFT directly."""
    with torch.no_grad():
        if adapter is BASELINE:
            with model.disable_adapter():
                return model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
        model.set_adapter(adapter)
        try:
            return model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
        finally:
            model.set_adapter("default")


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_teacher_logits_are_the_models_own(name, tokenizer, tmp_path):
    trainer = make_trainer(name, tokenizer, tmp_path)
    assert logits_head(trainer.model).rebuilds  # rebuilt from the hidden states, chunk by chunk, on all 20
    check_teacher_logits(name, trainer, tokenizer)


def check_teacher_logits(name, trainer, tokenizer):
    """Both roles' logits (the evaluation's and discovery's path; the trainer's separate and fused teacher passes)
    equal PEFT's ``model(...).logits``; left-padded rows read as the rows alone."""
    model = trainer.model.eval()
    ids, mask, rows = left_padded(tokenizer, CORPUS[:3])
    inputs = {"input_ids": ids, "attention_mask": mask}
    positions = mask.nonzero(as_tuple=True)
    for adapter in (BASELINE, "reinforced"):
        expected = own_logits(model, adapter, ids, mask).float()
        if name in POST_PROCESSED:  # the head is large enough for caps and scales to matter
            with using_adapter(model, adapter):
                head_output = model.get_output_embeddings()(final_hidden_states(model, ids, mask))
            assert (head_output - expected).abs().max() > 1.0
        torch.testing.assert_close(role_logits(model, ids, mask, adapter), expected, rtol=1e-5, atol=1e-4)
        for row, unpadded in enumerate(rows):  # a left-padded row reads as the row alone
            alone = role_logits(model, torch.tensor([unpadded]), torch.ones(1, len(unpadded), dtype=torch.long),
                                adapter)
            torch.testing.assert_close(expected[row, -len(unpadded):], alone[0], rtol=1e-4, atol=1e-4)
    for fused in (False, True) if name != "opt" else (False,):  # OPT flattens (B, T) before fc1: no PEFT mixed batch
        trainer.args.fused_teacher_pass = fused
        states = trainer._teacher_states(model, logits_head(model), inputs, *positions)
        for adapter, key in ((BASELINE, "baseline"), ("reinforced", "reinforced")):
            teacher = logits_from_states(model, states[key].reshape(-1, states[key].shape[-1]), logits_head(model))
            expected = own_logits(model, adapter, ids, mask)[positions].float()
            torch.testing.assert_close(teacher, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("mode", ["argmax", "soft"])
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_student_loss_and_gradients_are_those_of_the_models_logits(name, mode, tokenizer, tmp_path):
    trainer = make_trainer(name, tokenizer, tmp_path, target_mode=mode, alpha=2.0)
    assert plain_linear_head(trainer.model) is not None  # the default, chunked student loss runs on all 20
    check_student_loss(name, trainer, mode)


def check_student_loss(name, trainer, mode):
    """The default (chunked) and the unchunked student loss, their gradients and the student's probability of the
    original token equal those computed from the student's ``model(...).logits``."""
    model = trainer.model.train()
    with torch.no_grad():  # a student that differs from the base
        for parameter in (p for n, p in model.named_parameters() if ".default." in n and "lora_B" in n):
            parameter.normal_(std=0.1)
    batch = trainer._prepare_inputs(trainer.data_collator([{"text": text} for text in CORPUS[:3]]))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    rows, cols = (batch["shift_labels"] != IGNORE_INDEX).nonzero(as_tuple=True)
    targets = trainer._generic_targets(model, batch, rows, cols)
    original = batch["shift_labels"][rows, cols]

    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    log_probs = torch.log_softmax(logits[rows, cols].float(), dim=-1)
    if mode == "soft":
        reference = (torch.special.xlogy(targets, targets) - targets * log_probs).sum() / len(rows)
    else:
        reference = torch.nn.functional.nll_loss(log_probs, targets[rows, cols], ignore_index=IGNORE_INDEX)
    reference.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    expected_prob = log_probs.gather(-1, original[:, None]).exp().mean().item()
    for chunked in (True, False):
        model.zero_grad(set_to_none=True)
        trainer._metrics["train"].clear()
        trainer.args.chunked_student_loss = chunked
        with torch.no_grad():
            torch.testing.assert_close(trainer._generic_targets(model, batch, rows, cols), targets)
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        torch.testing.assert_close(loss, reference, rtol=1e-4, atol=1e-5)
        for parameter_name, grad in expected.items():
            torch.testing.assert_close(dict(model.named_parameters())[parameter_name].grad, grad, rtol=1e-3,
                                       atol=1e-5, msg=f"{name} chunked={chunked} {parameter_name}")
        assert trainer._metrics["train"]["student_original_token_prob"][0] == pytest.approx(expected_prob, rel=1e-4)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_default_lora_trains_saves_and_reloads(name, tokenizer, tmp_path):
    trainer = make_trainer(name, tokenizer, tmp_path, save_strategy="no")
    trainer.train()
    trainer.save_model()
    model = trainer.model.eval()
    head = model.get_base_model().get_output_embeddings()
    assert type(head) in (torch.nn.Linear,), "the LM head must never be adapted"
    run = json.loads((tmp_path / "out" / "whp_run.json").read_text())
    assert run["lora"]["all_linear_default"] == (name in WITHOUT_PEFT_DEFAULT)
    if name in WITHOUT_PEFT_DEFAULT:
        assert "every linear layer of the decoder" in (tmp_path / "out" / "README.md").read_text()
    trained = {n: p for n, p in model.named_parameters() if ".default." in n and "lora_B" in n}
    assert trained and all(p.abs().sum() > 0 for p in trained.values())

    reloaded = PeftModel.from_pretrained(tiny_model(name, tokenizer), tmp_path / "out").eval()
    ids, mask, _ = left_padded(tokenizer, CORPUS[:2])
    with torch.no_grad():
        model.set_adapter("default")
        expected = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
        again = reloaded(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    torch.testing.assert_close(again, expected, rtol=1e-4, atol=1e-4)


def test_an_unknown_post_processing_falls_back_to_the_models_own_logits(tokenizer, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(models, "LOGIT_SCALES", {})  # as if whp_trainer did not know Cohere's logit_scale
    with caplog.at_level(logging.WARNING, logger="whp_trainer.models"):
        trainer = make_trainer("cohere", tokenizer, tmp_path, target_mode="soft", alpha=2.0)
    assert "CohereForCausalLM" in caplog.text and "using the model's own logits" in caplog.text
    assert not logits_head(trainer.model).rebuilds
    check_teacher_logits("cohere", trainer, tokenizer)
    check_student_loss("cohere", trainer, "soft")


def test_whp_reinforce_and_unlearn_train_every_linear_layer_where_peft_has_no_default(tokenizer, tmp_path, caplog):
    from whp_trainer import cli

    tiny_model("cohere", tokenizer).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    (tmp_path / "forget.txt").write_text("\n\n".join(CORPUS[:4]), encoding="utf-8")
    common = ["--model_name_or_path", str(tmp_path / "base"), "--forget_data", str(tmp_path / "forget.txt"),
              "--lora_r", "2", "--max_steps", "1", "--per_device_train_batch_size", "2", "--max_length", "32",
              "--use_cpu", "true", "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true"]
    with caplog.at_level(logging.WARNING, logger="whp_trainer.models"):
        cli.main(["reinforce", *common, "--output_dir", str(tmp_path / "reinforced")])
        cli.main(["unlearn", *common, "--reinforced_adapter", str(tmp_path / "reinforced"),
                  "--output_dir", str(tmp_path / "unlearned")])
    assert caplog.text.count("PEFT has no default LORA target modules for model type 'cohere'") == 2
    for stage in ("reinforced", "unlearned"):
        targets = json.loads((tmp_path / stage / "adapter_config.json").read_text())["target_modules"]
        suffixes = {target.rsplit(".", 1)[-1] for target in targets}
        assert suffixes == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}, stage
    assert "every linear layer of the decoder" in (tmp_path / "unlearned" / "README.md").read_text()


def test_float32_states_meet_a_bfloat16_head_as_its_own_call_under_autocast_meets_them(tokenizer, tmp_path):
    # seen on an H200: a 4-bit NF4 base with bf16 compute whose float32 adapters left the teacher's final hidden
    # states float32 outside autocast; the head's weight stays bf16 and F.linear refused the mixed pair
    trainer = make_trainer("llama", tokenizer, tmp_path)
    model = trainer.model.eval()
    head = model.get_base_model().get_output_embeddings().to(torch.bfloat16)
    states = torch.randn(5, head.in_features)
    expected = head(states.to(torch.bfloat16)).float()
    torch.testing.assert_close(logits_from_states(model, states, logits_head(model)), expected)
    targets = torch.randint(0, head.out_features, (5,))
    hidden = states.clone().requires_grad_()
    loss, _ = chunked_distillation_loss(hidden, head.weight, targets, targets, chunk_size=2)
    loss.backward()
    reference = torch.nn.functional.cross_entropy(expected, targets)
    torch.testing.assert_close(loss, reference, rtol=1e-3, atol=1e-3)
    assert hidden.grad.dtype == torch.float32 and torch.isfinite(hidden.grad).all()
