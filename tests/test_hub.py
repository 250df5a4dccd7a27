"""Model card, adapter and merged exports, and the Hub push (up to huggingface_hub's API; no network)."""

import dataclasses
import json
import re
import shutil

import pytest
import torch
from huggingface_hub import CommitOperationAdd, EvalResult, ModelCard
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

import whp_trainer
from whp_trainer import hub
from whp_trainer.config import UnlearnConfig
from whp_trainer.evaluation import oracle_comparison, write_report
from whp_trainer.hub import build_model_card, export_merged, push_to_hub, write_model_card
from whp_trainer.models import base_quantization
from whp_trainer.runs import adapter_digest
from whp_trainer.toy import tiny_llama

LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
EVAL_RESULTS = {
    "unlearned": {"familiarity_token_prob": 0.006, "retain_perplexity": 12.3},
    "base": {"familiarity_token_prob": 0.244, "retain_perplexity": 11.9, "hellaswag": 0.577},
}
CARD_KWARGS = dict(
    model_name="whp-tiny",
    base_model="meta-llama/Llama-2-7b-hf",
    reinforced_adapter="runs/reinforced",
    dictionary={"size": 1500, "hash": "sha256:abc123", "path": "anchors.json"},
    dataset_description="the seven Harry Potter books, 512-token blocks",
    peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
    eval_results=EVAL_RESULTS,
)


@pytest.fixture(scope="module")
def args(tmp_path_factory):
    return UnlearnConfig(
        output_dir=str(tmp_path_factory.mktemp("out")),
        report_to="none",
        alpha=3.0,
        target_mode="soft",
        temperature=2.0,
        suppression_penalty=4.0,
        learning_rate=1e-5,
        max_steps=120,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=16,
        max_length=256,
        hub_model_id="someone/whp-tiny",
    )


@pytest.fixture(scope="module")
def run(tokenizer, args, tmp_path_factory):
    """A saved full-precision base, and an adapter folder as save_model() writes it (reinforced/ inside)."""
    base_dir = tmp_path_factory.mktemp("base")
    base = tiny_llama(tokenizer, seed=1)
    base.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    model = get_peft_model(base, LoraConfig(**LORA), adapter_name="default")
    torch.manual_seed(2)
    model.add_adapter("reinforced", LoraConfig(**LORA))
    model.set_adapter("default")
    model.eval()
    adapter_dir = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    write_model_card(adapter_dir, args, **{**CARD_KWARGS, "base_model": str(base_dir)})
    inputs = tokenizer(["Harry Potter studies magic at Hogwarts."], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
        with model.disable_adapter():
            assert not torch.allclose(model(**inputs).logits, logits)  # the adapter changes the output
    return {"base_dir": base_dir, "adapter_dir": adapter_dir, "inputs": inputs, "logits": logits}


def logits_of(model, inputs):
    with torch.no_grad():
        return model.eval()(**inputs).logits


def load_card(path):
    card = ModelCard.load(path)
    return card, card.data.to_dict()


# ---------------------------------------------------------------------------------------------------- model card


def test_adapter_card_metadata_and_content_round_trip(args, tmp_path):
    path = write_model_card(tmp_path, args, **CARD_KWARGS)
    card, metadata = load_card(path)

    assert path == tmp_path / "README.md"
    assert metadata["base_model"] == "meta-llama/Llama-2-7b-hf"
    assert metadata["library_name"] == "peft"
    assert metadata["tags"] == ["whp_trainer", "unlearning", "peft", "lora"]
    assert "whp_trainer" not in metadata  # the run's facts live in whp_run.json, not in the card's YAML
    run = json.loads((tmp_path / "whp_run.json").read_text())
    assert run["schema_version"] == 1 and run["versions"]["whp_trainer"] == whp_trainer.__version__
    assert run["method"] == {
        "alpha": 3.0,
        "relu": True,
        "target_mode": "soft",
        "temperature": 2.0,
        "exclude_repeated_anchors": True,
        "suppress_used_translations": True,
        "suppression_penalty": 4.0,
        "beyond_paper": {},
    }
    assert run["dictionary"] == {"size": 1500, "hash": "sha256:abc123", "path": "anchors.json"}
    assert run["training"]["effective_batch_size"] == 128
    assert "Do not merge it into a 4-bit model" in card.text  # PEFT's 4-bit merge gives the base back
    assert run["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert run["evaluation"] == {"results": EVAL_RESULTS}  # no oracle: no comparison
    assert card.data.eval_results == [
        EvalResult(
            task_type="text-generation",
            dataset_type="whp_trainer-evaluation",
            dataset_name="whp_trainer unlearning evaluation",
            metric_type=metric,
            metric_name=metric,
            metric_value=value,
        )
        for metric, value in EVAL_RESULTS["unlearned"].items()
    ]
    text = card.text
    for expected in (
        "PeftModel.from_pretrained(base, \"someone/whp-tiny\")",
        "soft: KL to softmax(v_generic / τ), τ = 2.0",
        "True (penalty 4.0)",
        "| beyond the paper | none: the paper's objective |",
        "1500 entries, hash `sha256:abc123`, `anchors.json`",
        "`runs/reinforced`",
        "the seven Harry Potter books, 512-token blocks",
        "| learning rate | 1e-05 (linear schedule) |",
        "| steps | 120 |",
        "| gradient accumulation | 16 |",
        "| max length (tokens per block) | 256 |",
        "LORA, r = 8, alpha = 16",
        "| target modules | q_proj, v_proj |",
        "| metric | base | unlearned | unlearned − base |",
        "| `familiarity_token_prob` | 0.244 | 0.006 | -0.238 |",
        "| `hellaswag` | 0.577 | — | — |",
        "Lynch et al., 2024",
        "Shi et al., 2023",
        "@misc{eldan2023whos",
        "eprint        = {2310.02238}",
    ):
        assert expected in text, expected


def test_merged_card_and_minimal_card(args):
    card = build_model_card(args, model_name="whp-tiny", base_model="/no/such/local/base", form="merged")
    metadata = card.data.to_dict()

    assert "base_model" not in metadata  # a local path is no Hub id
    assert metadata["library_name"] == "transformers"
    assert metadata["tags"] == ["whp_trainer", "unlearning", "merged"]
    assert "model-index" not in metadata
    assert 'AutoModelForCausalLM.from_pretrained("someone/whp-tiny")' in card.text
    assert "PeftModel" not in card.text
    assert "`base` (a local model)" in card.text and "/no/such" not in card.text  # named, never its path
    assert "none (reinforced boost only)" in card.text and "none (anchors only)" in card.text
    assert "No evaluation results were recorded" in card.text
    assert "| base during training | full precision |" in card.text and "base quantized" not in card.text
    assert "Do not merge it into a 4-bit model" not in card.text  # nothing left to merge


ORACLE_RESULTS = {
    "base": {"familiarity_token": 0.24, "verbmem_forget": 0.5, "forget_perplexity": 2.0, "retain_perplexity": 10.0},
    "oracle": {"familiarity_token": 0.01, "verbmem_forget": 0.1, "forget_perplexity": 20.0, "retain_perplexity": 10.0},
    "unlearned": {"familiarity_token": 0.2, "verbmem_forget": 0.11, "forget_perplexity": 40.0,
                  "retain_perplexity": 10.1},
}


def test_the_card_says_which_forget_metrics_are_above_at_or_below_the_oracle(args, tmp_path):
    write_model_card(tmp_path, args, **{**CARD_KWARGS, "eval_results": ORACLE_RESULTS})
    text = (tmp_path / "README.md").read_text()
    record = json.loads((tmp_path / "whp_run.json").read_text())

    assert record["evaluation"]["oracle_comparison"] == oracle_comparison(ORACLE_RESULTS)
    section = text[text.index("### Against the oracle"):text.index("### Metrics")]
    for line in (
        "- **above** the oracle: `familiarity_token` (knowledge left), `forget_perplexity` (over-forgotten)",
        "- **at** the oracle: `verbmem_forget` (as the oracle)",
        "- retain perplexity +1.0% against the base's: retained",
        "| `familiarity_token` | above (+0.23): knowledge left | above (+0.19): knowledge left |",
    ):
        assert line in section, line
    assert "**below** the oracle" not in section  # no metric of the unlearned model is below it


def test_the_card_and_the_report_render_the_same_tables(args, tmp_path):
    write_report(ORACLE_RESULTS, tmp_path / "report", config=None)
    report = (tmp_path / "report" / "report.md").read_text()
    card = build_model_card(args, **{**CARD_KWARGS, "eval_results": ORACLE_RESULTS}).text

    tables = [line for line in report.splitlines() if line.startswith("|")]
    assert len(tables) == 2 + 4 + 2 + 4  # the results and the verdicts: header, rule, a row per metric
    assert all(line in card for line in tables)
    assert "| `forget_perplexity` | 2 | 20 | 40 | +38 | +20 |" in tables


def test_a_record_of_another_schema_is_refused_before_any_request(run, trainer_output, tmp_path):
    record = json.loads((trainer_output / "whp_run.json").read_text())
    (trainer_output / "whp_run.json").write_text(json.dumps({**record, "schema_version": 2}))
    api = RecordingApi()
    with pytest.raises(ValueError, match=r"whp_run.json: schema_version=2; this whp_trainer reads 1"):
        push_to_hub(trainer_output, "someone/whp-tiny", form="adapter", token="hf_test",
                    eval_report={"results": EVAL_RESULTS}, api=api)
    assert api.calls == []
    with pytest.raises(ValueError, match="schema_version=2"):
        export_merged(run["base_dir"], trainer_output, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()  # refused before the export began


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"form": "gguf"}, "form='gguf'"),
        ({"dictionary": {"entries": 3}}, "dictionary has unknown keys ['entries']"),
        ({"eval_results": {"unlearned": {"ppl": "high"}}}, "eval_results['unlearned']['ppl']='high'"),
        ({"eval_results": {"unlearned": 0.5}}, "eval_results['unlearned'] must be a dict"),
    ],
)
def test_card_arguments_are_checked(args, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_model_card(args, model_name="whp-tiny", **kwargs)


# ------------------------------------------------------------------------------------------------------- exports


def test_adapter_form_loads_with_peft_and_gives_the_same_logits(run):
    base = AutoModelForCausalLM.from_pretrained(run["base_dir"])
    model = PeftModel.from_pretrained(base, run["adapter_dir"])

    assert list(model.peft_config) == ["default"]
    torch.testing.assert_close(logits_of(model, run["inputs"]), run["logits"], rtol=1e-5, atol=1e-5)


def test_merged_export_loads_as_a_plain_model_with_the_same_logits(run, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="whp_trainer.hub"):
        out = export_merged(run["base_dir"], run["adapter_dir"], tmp_path / "merged", dtype=torch.float32)
    assert "trained on the base quantized" not in caplog.text
    model = AutoModelForCausalLM.from_pretrained(out)

    assert not (out / "adapter_config.json").exists() and not (out / "reinforced").exists()
    assert not any("lora" in name for name, _ in model.named_parameters())
    torch.testing.assert_close(logits_of(model, run["inputs"]), run["logits"], rtol=1e-5, atol=1e-5)
    assert AutoTokenizer.from_pretrained(out).get_vocab() == AutoTokenizer.from_pretrained(run["base_dir"]).get_vocab()
    card, metadata = load_card(out / "README.md")
    assert metadata["library_name"] == "transformers" and "merged" in metadata["tags"]
    record = json.loads((out / "whp_run.json").read_text())  # the adapter's record, copied beside the export
    assert record == {**json.loads((run["adapter_dir"] / "whp_run.json").read_text()), "base_model": str(run["base_dir"]),
                      "adapter_sha256": adapter_digest(run["adapter_dir"])}  # what was merged, into what
    assert record["method"]["alpha"] == 3.0 and "| α (reinforced boost weight) | 3.0 |" in card.text
    assert card.data.eval_results[0].metric_value == 0.006


def test_merged_export_never_writes_into_a_folder_it_did_not_make(run, tmp_path):
    out = tmp_path / "merged"
    (out / "sub").mkdir(parents=True)
    (out / "thesis.txt").write_text("years of work")
    (out / "sub" / "notes.txt").write_text("more")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="non-empty folder that whp did not create"):
            export_merged(run["base_dir"], run["adapter_dir"], out, overwrite=overwrite)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["sub", "sub/notes.txt", "thesis.txt"]


def test_merged_export_overwrite_replaces_only_its_own_files(run, tmp_path):
    out = export_merged(run["base_dir"], run["adapter_dir"], tmp_path / "merged")
    (out / "my_notes.txt").write_text("added by the user after the export")
    weights = (out / "model.safetensors").read_bytes()
    assert export_merged(run["base_dir"], run["adapter_dir"], out) == out  # the same export: up to date, skipped
    with pytest.raises(FileExistsError, match="other settings.*--overwrite"):
        export_merged(run["base_dir"], run["adapter_dir"], out, dtype=torch.bfloat16)
    export_merged(run["base_dir"], run["adapter_dir"], out, dtype=torch.bfloat16, overwrite=True)
    assert (out / "my_notes.txt").read_text() == "added by the user after the export"
    assert (out / "model.safetensors").read_bytes() != weights  # the new export's weights, not the old ones
    with pytest.raises(ValueError, match="holds the export's input"):
        export_merged(run["base_dir"], run["adapter_dir"], run["adapter_dir"], overwrite=True)
    with pytest.raises(FileNotFoundError, match="adapter_dir=.* has no adapter_config.json"):
        export_merged(run["base_dir"], tmp_path, tmp_path / "other")


def test_merged_export_of_an_adapter_trained_on_a_4bit_base(run, args, tmp_path, caplog):
    quantized = AutoModelForCausalLM.from_pretrained(
        run["base_dir"], quantization_config=BitsAndBytesConfig(load_in_4bit=True)
    )
    torch.manual_seed(3)
    model = get_peft_model(quantized, LoraConfig(**LORA))
    model.save_pretrained(tmp_path / "adapter4")
    write_model_card(tmp_path / "adapter4", args, model_name="whp-tiny4",  # as UnlearnTrainer saves it
                     base_quantization=base_quantization(quantized))
    said = " ".join((tmp_path / "adapter4" / "README.md").read_text().split())
    assert "This adapter was trained on the base quantized 4-bit fp4 (bitsandbytes)." in said
    assert "| base during training | 4-bit fp4 (bitsandbytes) |" in said
    assert "Do not merge it into a 4-bit model" in said

    with pytest.raises(ValueError, match="base_model is a quantized model"):
        export_merged(model.get_base_model(), tmp_path / "adapter4", tmp_path / "refused")
    # base_model=None: the adapter config's base path, loaded in full precision
    with caplog.at_level("WARNING", logger="whp_trainer.hub"):
        out = export_merged(None, tmp_path / "adapter4", tmp_path / "merged")
    assert "trained on the base quantized 4-bit fp4 (bitsandbytes) and is merged into the full-precision" in caplog.text
    merged = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(run["base_dir"])
    full_precision = PeftModel.from_pretrained(base, tmp_path / "adapter4")

    assert not getattr(merged, "is_quantized", False)
    assert (out / "tokenizer.json").exists()  # none beside this adapter: the base's
    assert "merged" in load_card(out / "README.md")[1]["tags"]  # the run record, re-rendered in the merged form
    said = " ".join((out / "README.md").read_text().split())
    assert "into the full-precision base, though it was trained on the base quantized 4-bit fp4" in said
    expected = logits_of(full_precision, run["inputs"])
    torch.testing.assert_close(logits_of(merged, run["inputs"]), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------- push


class RecordingApi:
    """An ``HfApi`` stand-in that records the calls push_to_hub makes."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def create_commit(self, repo_id, operations, **kwargs):
        self.calls.append(("create_commit", repo_id, kwargs))
        self.operations = list(operations)
        return "commit-info"

    def uploaded(self):
        return {op.path_in_repo: op for op in self.operations}


@pytest.fixture
def trainer_output(run, tmp_path):
    """The adapter folder as a training run leaves it: with a checkpoint and a hidden cache beside the model."""
    folder = tmp_path / "run"
    shutil.copytree(run["adapter_dir"], folder)
    (folder / "checkpoint-10" / "reinforced").mkdir(parents=True)
    (folder / "checkpoint-10" / "reinforced" / "adapter_model.safetensors").write_bytes(b"x")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "lock").write_text("")
    (folder / "training_args.bin").write_bytes(b"args")
    return folder


def test_push_uploads_the_model_files_but_not_the_reinforced_adapter(trainer_output, tmp_path):
    dictionary = tmp_path / "anchors.json"
    dictionary.write_text(json.dumps({"Hogwarts": ["Mystic Academy"]}))
    api = RecordingApi()

    result = push_to_hub(
        trainer_output,
        "someone/whp-tiny",
        form="adapter",
        private=True,
        revision="v1",
        commit_message="first upload",
        token="hf_test",
        dictionary_file=dictionary,
        eval_report=EVAL_RESULTS,
        api=api,
    )

    assert result == "commit-info"
    assert api.calls == [
        (
            "create_repo",
            "someone/whp-tiny",
            {"token": "hf_test", "private": True, "repo_type": "model", "exist_ok": True},
        ),
        ("create_branch", "someone/whp-tiny", {"branch": "v1", "token": "hf_test", "exist_ok": True}),
        ("create_commit", "someone/whp-tiny", {"commit_message": "first upload", "revision": "v1", "token": "hf_test"}),
    ]
    uploaded = api.uploaded()
    root_files = {path.name for path in trainer_output.iterdir() if path.is_file()}
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= root_files
    assert set(uploaded) == root_files | {"whp/anchors.json", "whp/eval_report.json"}
    assert all(isinstance(op, CommitOperationAdd) for op in uploaded.values())
    assert json.loads(uploaded["whp/eval_report.json"].path_or_fileobj) == EVAL_RESULTS
    assert uploaded["whp/anchors.json"].path_or_fileobj == str(dictionary)


def test_push_puts_an_evaluation_report_into_the_uploaded_card(trainer_output, tmp_path):
    results = {**EVAL_RESULTS, "oracle": {"familiarity_token_prob": 0.005, "retain_perplexity": 11.9}}
    report = tmp_path / "report.json"
    measured = {"unlearned": adapter_digest(trainer_output)}  # as whp evaluate writes it: what it measured
    report.write_text(json.dumps({"results": results, "settings": {}, "measured_adapters": measured}))
    local_card, local_record = ((trainer_output / name).read_text() for name in ("README.md", "whp_run.json"))
    api = RecordingApi()

    push_to_hub(trainer_output, "someone/whp-tiny", form="adapter", token="hf_test", eval_report=report, api=api)

    card = ModelCard(api.uploaded()["README.md"].path_or_fileobj.decode())
    record = json.loads(api.uploaded()["whp_run.json"].path_or_fileobj)  # the uploaded record agrees with the card
    assert record["evaluation"] == {"results": results, "oracle_comparison": oracle_comparison(results)}
    assert {key: value for key, value in record.items() if key != "evaluation"} == {
        key: value for key, value in json.loads(local_record).items() if key != "evaluation"}
    assert {(r.metric_type, r.metric_value) for r in card.data.eval_results} == {
        (metric, value) for metric, value in EVAL_RESULTS["unlearned"].items()
    }
    assert "| `familiarity_token_prob` | 0.244 | 0.005 | 0.006 | -0.238 | +0.001 |" in card.text
    assert "- retain perplexity +3.4% against the base's: damaged" in card.text  # the report's verdicts
    assert (trainer_output / "README.md").read_text() == local_card  # the local files are untouched
    assert (trainer_output / "whp_run.json").read_text() == local_record


def test_push_includes_the_reinforced_adapter_only_when_asked_and_warns(trainer_output):
    api = RecordingApi()

    with pytest.warns(UserWarning, match="REINFORCED adapter.*undo the unlearning"):
        push_to_hub(
            trainer_output, "someone/whp-tiny", form="adapter", token="hf_test", include_reinforced=True, api=api
        )

    reinforced = sorted(path for path in api.uploaded() if path.startswith("reinforced/"))
    assert "reinforced/adapter_config.json" in reinforced and "reinforced/adapter_model.safetensors" in reinforced
    assert not any(path.startswith("checkpoint-") for path in api.uploaded())
    assert api.calls[0][2]["private"] is False and api.calls[-1][2]["revision"] is None
    assert api.calls[-1][2]["commit_message"] == "Upload Who's Harry Potter unlearned model (adapter)"


def test_push_of_a_merged_export(run, tmp_path):
    out = export_merged(run["base_dir"], run["adapter_dir"], tmp_path / "merged")
    api = RecordingApi()

    push_to_hub(out, "whp-tiny", form="merged", token="hf_test", api=api)

    assert "config.json" in api.uploaded() and "README.md" in api.uploaded()
    assert not any(path.startswith("adapter") for path in api.uploaded())
    with pytest.raises(ValueError, match="form='adapter' but folder=.* has no adapter_config.json"):
        push_to_hub(out, "whp-tiny", form="adapter", token="hf_test", api=api)


@pytest.mark.parametrize(
    ("repo_id", "message"),
    [
        (None, "repo_id is required"),
        ("", "repo_id is required"),
        ("a/b/c", "repo_id='a/b/c' is not a valid Hub repo id"),
    ],
)
def test_push_needs_a_valid_repo_id(run, repo_id, message):
    api = RecordingApi()
    with pytest.raises(ValueError, match=message):
        push_to_hub(run["adapter_dir"], repo_id, form="adapter", token="hf_test", api=api)
    assert api.calls == []


def test_push_needs_a_token(run, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hub, "get_token", lambda: None)  # no cached login either
    api = RecordingApi()

    with pytest.raises(ValueError, match="no Hugging Face token: pass token=.*HF_TOKEN.*hf auth login"):
        push_to_hub(run["adapter_dir"], "someone/whp-tiny", form="adapter", api=api)
    assert api.calls == []


def test_push_checks_extra_files_before_any_request(run, tmp_path):
    api = RecordingApi()
    with pytest.raises(FileNotFoundError, match="dictionary_file=.*missing.json.* is not a file"):
        push_to_hub(
            run["adapter_dir"], "someone/whp-tiny", form="adapter", token="hf_test",
            dictionary_file=tmp_path / "missing.json", api=api,
        )
    assert api.calls == []


# --- cards the Hub accepts ------------------------------------------------------------------------------------------


def leaves(value):
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in leaves(item)]
    return [value]


def test_the_card_validates_with_huggingface_hub_and_holds_no_nan(args, tmp_path, monkeypatch):
    results = {"unlearned": {"familiarity_token": 0.01, "familiarity_completion": float("nan"),
                             "membership_auc_mink": 0.55, "membership_auc_mink_se": 0.05,
                             "membership_holdout_read_by_rule": 12},
               "base": {"familiarity_token": 0.2, "familiarity_completion": 0.3}}
    path = write_model_card(tmp_path, args, **{**CARD_KWARGS, "eval_results": results},
                            datasets=["someone/hp-books", str(tmp_path)],
                            tracker_urls={"wandb": "https://wandb.ai/me/whp/runs/abc",
                                          "trackio": "https://me-trackio.hf.space?project=whp&runs=r1"})
    text = path.read_text(encoding="utf-8")
    assert "nan" not in text.lower().split("---")[1]  # the YAML front matter
    card = ModelCard.load(path)  # huggingface_hub parses the metadata and the model-index back
    metadata = card.data.to_dict()
    # the model's results only: an AUC's standard error and a count of items describe the evaluation's sample
    assert [result.metric_type for result in card.data.eval_results] == ["familiarity_token", "membership_auc_mink"]
    assert "| `membership_holdout_read_by_rule` | — | 12 |" in text  # the card's table still shows them
    assert all(leaf is not None for leaf in leaves(metadata["model-index"]))
    assert metadata["datasets"] == ["someone/hp-books"]  # a local path is no Hub dataset
    assert "| `familiarity_completion` | 0.3 | — | — |" in text
    assert "[Weights & Biases](https://wandb.ai/me/whp/runs/abc)" in text
    assert "trackio:https://me-trackio.hf.space?project=whp&runs=r1" in metadata["tags"]
    assert "[`someone/hp-books`](https://huggingface.co/datasets/someone/hp-books)" in text

    posted = []

    class Response:
        status_code = 200

        def raise_for_status(self):
            pass

    class RecordingSession:  # the Hub's /api/validate-yaml is where the real check runs: no network here
        def post(self, url, json, headers):
            posted.append((url, json))
            return Response()

    monkeypatch.setattr("huggingface_hub.repocard.get_session", lambda: RecordingSession())
    monkeypatch.setattr("huggingface_hub.repocard.hf_raise_for_status", lambda response: None)
    card.validate()
    [(url, body)] = posted
    assert url.endswith("/api/validate-yaml") and body == {"repoType": "model", "content": str(card)}


def test_tracker_urls_come_from_the_trackers_running(monkeypatch):
    import trl.trainer.utils

    monkeypatch.setattr(trl.trainer.utils, "get_trackio_space_url", lambda: "https://me-trackio.hf.space?project=p")
    assert hub.tracker_urls() == {"trackio": "https://me-trackio.hf.space?project=p"}
    monkeypatch.setattr(trl.trainer.utils, "get_trackio_space_url", lambda: None)
    assert hub.tracker_urls() == {}


def test_the_card_shows_the_robustness_section_with_the_oracle_after_the_same_attack(args, tmp_path):
    results = {role: {**metrics, "familiarity_token@nf4": metrics["familiarity_token"] + 0.1,
                      "knowledge_forget_loglik@many_shot": -1.0} for role, metrics in ORACLE_RESULTS.items()}
    write_model_card(tmp_path, args, **{**CARD_KWARGS, "eval_results": results})
    text = (tmp_path / "README.md").read_text()
    section = text[text.index("### Robustness"):text.index("### Metrics")]
    assert "Every role under the same attack, the oracle included" in section
    assert "- `nf4`: the merged model reloaded in 4-bit NF4 (bitsandbytes; an adapter trained on a quantized base is " \
           "merged into the full-precision one)" in section
    assert "| `many_shot` | `knowledge_forget_loglik` | -1 | -1 | -1 | at (+0) |" in section


def test_a_card_never_shows_a_local_path_and_names_a_local_base_by_its_folder(args, tmp_path):
    base, reinforced, dictionary = tmp_path / "my-base", tmp_path / "runs" / "reinforced", tmp_path / "anchors.yaml"
    for folder in (base, reinforced):
        folder.mkdir(parents=True)
    dictionary.write_text("Harry: Jon\n", encoding="utf-8")
    facts = {**CARD_KWARGS, "base_model": str(base), "reinforced_adapter": str(reinforced),
             "dictionary": {"size": 1, "hash": "sha256:abc", "path": str(dictionary)}}
    for form in ("adapter", "merged"):
        card = str(build_model_card(args, **facts, form=form))
        assert str(tmp_path) not in card
        assert "`my-base` (a local model)" in card and "| base model | `my-base` (a local folder, not on the Hub) |" in card
    assert 'from_pretrained("my-base")  # the base\'s folder on your machine' in str(build_model_card(args, **facts))
    hub_card = str(build_model_card(args, **CARD_KWARGS))
    assert "`meta-llama/Llama-2-7b-hf` forget" in hub_card and "(a local model)" not in hub_card


def test_the_card_names_every_setting_beyond_the_papers_objective(args, tmp_path):
    recommended = dataclasses.replace(args, original_cap_weight=1.0, original_cap_depth=1.0, retain_weight=1.5)
    card, _ = load_card(write_model_card(tmp_path, recommended, **CARD_KWARGS))
    run = json.loads((tmp_path / "whp_run.json").read_text())
    assert run["method"]["beyond_paper"] == {"original_cap_weight": 1.0, "original_cap_depth": 1.0,
                                             "retain_weight": 1.5, "retain_loss": "kl"}
    assert ("| beyond the paper | `original_cap_weight` 1.0, `original_cap_depth` 1.0, `retain_weight` 1.5, "
            "`retain_loss` kl |") in card.text


def test_every_setting_documented_as_beyond_the_paper_is_on_the_card():
    from whp_trainer.record import BEYOND_PAPER

    documented = {field.name for field in dataclasses.fields(UnlearnConfig)
                  if "beyond the paper" in field.metadata.get("help", "").lower()}
    assert documented == set(BEYOND_PAPER)  # a new option of the objective, said to depart, is listed on the card
