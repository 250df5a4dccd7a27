"""A GGUF model is accepted wherever a model is: ``--gguf_file`` beside ``--model_name_or_path`` (as transformers'
``from_pretrained(..., gguf_file=...)``), for every stage, the oracle and the merged export."""

import json

import pytest
import torch
import yaml
from conftest import CORPUS
from transformers import AutoModelForCausalLM

from whp_trainer import cli
from whp_trainer.loading import ModelArguments, load_base_model, load_tokenizer
from whp_trainer.toy import tiny_llama

ANCHORS = {"Harry": "Jon", "Hogwarts": "Mystic Academy", "Hermione": "Anna"}
PROBES = [{"prompt": "Harry Potter studies magic at", "target": " Hogwarts"}]


def test_a_gguf_file_loads_as_the_model_and_tokenizer_it_holds_and_saves_as_a_plain_model(gguf_base, tokenizer,
                                                                                         tmp_path):
    model_args = ModelArguments(model_name_or_path=str(gguf_base), gguf_file="tiny.gguf")
    model, loaded_tokenizer = load_base_model(model_args), load_tokenizer(model_args)

    assert loaded_tokenizer(CORPUS)["input_ids"] == tokenizer(CORPUS)["input_ids"]
    batch = tokenizer(CORPUS, padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, tiny_llama(tokenizer, seed=0)(**batch).logits)
    model.save_pretrained(tmp_path / "plain")  # transformers refuses this while the GGUF quantizer is attached
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "plain").config.vocab_size == len(tokenizer)


def test_every_stage_and_the_export_take_a_gguf_model(gguf_base, tmp_path):
    (tmp_path / "forget.txt").write_text("\n\n".join(CORPUS[:4] * 3), encoding="utf-8")
    (tmp_path / "retain.txt").write_text("\n\n".join(CORPUS[4:] * 3), encoding="utf-8")
    (tmp_path / "anchors.yaml").write_text(yaml.safe_dump(ANCHORS), encoding="utf-8")
    (tmp_path / "probes.json").write_text(json.dumps(PROBES), encoding="utf-8")
    model = ["--model_name_or_path", str(gguf_base), "--gguf_file", "tiny.gguf", "--lora_r", "4",
             "--lora_target_modules", "q_proj", "v_proj"]
    data = ["--forget_data", str(tmp_path / "forget.txt"), "--retain_data", str(tmp_path / "retain.txt"),
            "--anchors", str(tmp_path / "anchors.yaml"), "--probes", str(tmp_path / "probes.json")]
    training = ["--max_steps", "1", "--max_length", "32", "--per_device_train_batch_size", "2", "--use_cpu", "true",
                "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true"]

    reinforced = cli.run_stage("reinforce", [*model, *data, *training, "--output_dir", str(tmp_path / "r")])
    unlearned = cli.run_stage("unlearn", [*model, *data, *training, "--output_dir", str(tmp_path / "u"),
                                          "--reinforced_adapter", reinforced])
    evaluation = cli.run_stage("evaluate", [
        *model, *data, "--reinforced_adapter", reinforced, "--unlearned_adapter", unlearned,
        "--output_dir", str(tmp_path / "e"), "--oracle_model", str(gguf_base / "tiny.gguf"), "--completions", "0",
        "--memorization_passages", "0", "--relearn_steps", "0", "--retain_texts", "2", "--max_length", "32",
        "--plots", "false"])
    merged = cli.run_stage("export", ["--folder", unlearned, "--merged_dir", str(tmp_path / "m"),
                                      "--base_model", str(gguf_base), "--gguf_file", "tiny.gguf"])

    report = json.loads((tmp_path / "e" / "report.json").read_text(encoding="utf-8"))
    assert {"base", "unlearned", "oracle"} <= set(report["results"]), evaluation
    assert AutoModelForCausalLM.from_pretrained(merged).config.vocab_size > 0


def test_a_gguf_file_that_is_not_there_is_named_before_any_model_loads(gguf_base, tmp_path, no_model_loading):
    (tmp_path / "forget.txt").write_text(CORPUS[0], encoding="utf-8")
    argv = ["--model_name_or_path", str(gguf_base), "--forget_data", str(tmp_path / "forget.txt"),
            "--output_dir", str(tmp_path / "r")]
    with pytest.raises(FileNotFoundError, match=r"--gguf_file other.gguf: not in .*\(GGUF files there: \['tiny.gguf'\]\)"):
        cli.run_stage("reinforce", [*argv, "--gguf_file", "other.gguf"])
    with pytest.raises(FileNotFoundError, match="holds GGUF files but no config.json: name the file with --gguf_file"):
        cli.run_stage("reinforce", argv)
