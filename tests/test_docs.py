"""Every code block of README.md and docs/ is run, parsed or included from a file under examples/ that is tested.

- ```python blocks: snippet includes of an existing file section (README, which GitHub renders without includes,
  repeats a section of an example word for word), or code run here page by page with the names the page assumes
  (tiny models stand in for Hub models, a recording object for the Hub API, a canned reply for an LLM endpoint);
- ```yaml blocks: includes of existing files, or YAML that parses; a ``whp run`` config (inline or included) is
  planned and every stage's options parse;
- ```bash blocks: every ``whp`` command (also ``... -m whp_trainer.cli STAGE`` under accelerate launch or torchrun)
  names a real sub-command and only options it accepts;
- examples/accelerate/*.yaml: accepted by accelerate's ``ClusterConfig``, and every key of their ``fsdp_config`` and
  ``deepspeed_config`` is an option of ``accelerate launch`` (which silently drops unknown ones).
"""

import json
import re
import shlex
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CORPUS, LORA
from datasets import Dataset
from peft import LoraConfig, get_peft_model

from whp_trainer import chat, cli, data, hub
from whp_trainer.config import UnlearnConfig
from whp_trainer.runs import adapter_digest
from whp_trainer.toy import tiny_llama

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
INCLUDE = re.compile(r'^--8<-- "([^":]+)(?::([\w-]+))?"$')
HUB_BASES = ("meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b-chat-hf")  # Hub ids the guides load: a tiny base here


def blocks(page: Path, language: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(page.read_text(encoding="utf-8")) if lang == language]


def section(path: str, name: str | None) -> str:
    """The text a snippet include stands for (the whole file, or the lines between its section markers)."""
    text = (ROOT / path).read_text(encoding="utf-8")
    if name is None:
        return text
    match = re.search(rf"# --8<-- \[start:{name}\]\n(.*?)\n\s*# --8<-- \[end:{name}\]", text, re.DOTALL)
    assert match, f"{path} has no snippet section {name!r}"
    return textwrap.dedent(match.group(1))


def includes(body: str) -> list[tuple[str, str | None]] | None:
    """The (file, section) pairs of a block made only of snippet includes, else None."""
    found = [INCLUDE.match(line.strip()) for line in body.strip().splitlines()]
    return [(m.group(1), m.group(2)) for m in found] if found and all(found) else None


def inline_python(page: Path) -> list[str]:
    return [body for body in blocks(page, "python") if includes(body) is None]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_included_snippet_exists(page):
    for language in ("python", "yaml"):
        for body in blocks(page, language):
            for path, name in includes(body) or []:
                assert (ROOT / path).is_file(), f"{page.name}: {path} does not exist"
                section(path, name)


def test_readme_python_is_the_drop_in_example_word_for_word():
    [body] = blocks(ROOT / "README.md", "python")
    assert body.strip() == section("examples/drop_in.py", "drop-in").strip()


EXECUTED_PAGES = {"guides/anchors.md", "guides/reinforce.md", "guides/publish.md", "guides/unlearn.md"}


def test_every_page_with_inline_python_is_executed_here():
    pages = {str(page.relative_to(ROOT / "docs")) for page in PAGES[1:] if inline_python(page)}
    assert pages == EXECUTED_PAGES


@pytest.fixture
def page_namespace(tokenizer, tmp_path, monkeypatch):
    """What the guides' snippets assume exists, in a temporary working directory."""
    monkeypatch.chdir(tmp_path)
    base = tiny_llama(tokenizer, seed=0)
    for folder in ("path/to/base", "base"):
        base.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    Path("anchors.yaml").write_text(yaml.safe_dump({"Harry": ["Jon", "Tom"], "Hogwarts": "Mystic Academy"}))
    torch.manual_seed(0)
    reinforced = get_peft_model(tiny_llama(tokenizer, seed=0), LoraConfig(init_lora_weights=False, **LORA),
                                adapter_name="reinforced")
    return {
        "torch": torch, "tokenizer": tokenizer, "text": CORPUS[0], "texts": CORPUS[:4],
        "dataset": Dataset.from_dict({"text": CORPUS}), "model": reinforced,
        "target_texts": CORPUS[:4], "reference_texts": CORPUS[4:], "retain_texts": CORPUS[4:],
        "args": UnlearnConfig(output_dir="runs/whp", report_to="none"), "lora_config": LoraConfig(**LORA),
    }


def run_page(page: str, namespace: dict) -> dict:
    for body in inline_python(ROOT / "docs" / page):
        for hub_id in HUB_BASES:
            body = body.replace(hub_id, "base")
        exec(compile(body, page, "exec"), namespace)
    return namespace


def test_anchors_guide_runs(page_namespace, monkeypatch):
    reply = json.dumps({"Hogwarts": ["Mystic Academy"], "Quidditch": ["Skyball"]})
    monkeypatch.setattr(chat, "EndpointChat", lambda url, model, api_key=None: lambda prompt: reply)
    namespace = run_page("guides/anchors.md", page_namespace)
    assert len(namespace["dictionary"]) == 2 and Path("anchors.csv").is_file()
    assert namespace["batch"]["input_ids"].shape[0] == 1
    assert "Quidditch" in Path("candidates.yaml").read_text()


def test_reinforce_guide_runs(page_namespace):
    namespace = run_page("guides/reinforce.md", page_namespace)
    assert (Path(namespace["path"]) / "adapter_config.json").is_file()


def test_unlearn_guide_runs(page_namespace, monkeypatch):
    calls = []
    monkeypatch.setattr(data, "load_dataset", lambda *a, **k: calls.append(a) or Dataset.from_dict({"text": CORPUS}))
    torch.manual_seed(0)
    get_peft_model(tiny_llama(page_namespace["tokenizer"]), LoraConfig(**LORA)).save_pretrained("runs/reinforced")
    namespace = run_page("guides/unlearn.md", page_namespace)
    assert calls == [("someone/hp-books", "books")]
    trainer = namespace["trainer"]
    assert trainer.has_reinforced and trainer.model.get_base_model().is_loaded_in_4bit
    assert len(trainer.train_dataset) >= 1


def test_publish_guide_runs(page_namespace, monkeypatch):
    page_namespace["model"].save_pretrained("runs/whp", selected_adapters=["reinforced"])
    Path("runs/whp/reinforced/adapter_config.json").rename("runs/whp/adapter_config.json")
    Path("runs/whp/reinforced/adapter_model.safetensors").rename("runs/whp/adapter_model.safetensors")
    Path("anchors.json").write_text(json.dumps({"Hogwarts": ["Mystic Academy"]}))
    measured = {"unlearned": adapter_digest("runs/whp")}  # as whp evaluate records the adapter it measured
    Path("runs/whp/eval.json").write_text(json.dumps({"results": {"unlearned": {"familiarity_token": 0.01}},
                                                      "measured_adapters": measured}))
    uploads = []

    class RecordingApi:
        def __getattr__(self, name):
            return lambda *args, **kwargs: uploads.append((name, args, kwargs))

    monkeypatch.setattr(hub, "HfApi", RecordingApi)
    monkeypatch.setenv("HF_TOKEN", "hf_docs_test")
    run_page("guides/publish.md", page_namespace)
    assert Path("runs/whp/README.md").is_file() and Path("runs/whp-merged/config.json").is_file()
    assert [call[0] for call in uploads] == ["create_repo", "create_branch", "create_commit"]


def whp_commands(page: Path) -> list[list[str]]:
    commands = []
    for body in blocks(page, "bash"):
        for line in body.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words and words[0] == "whp":
                    commands.append(words[1:])
                elif "whp_trainer.cli" in words:  # accelerate launch / torchrun ... -m whp_trainer.cli STAGE ...
                    commands.append(words[words.index("whp_trainer.cli") + 1 :])
    return commands


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_whp_commands_in_the_docs_parse(page, monkeypatch):
    monkeypatch.chdir(ROOT)
    for argv in whp_commands(page):
        command, rest = (argv[0], argv[1:]) if argv else ("", [])
        if command in ("", "demo"):
            cli.parse_stage("demo", rest)
        elif command == "run":
            path, overrides = rest[0], [item for item in rest[1:] if item != "--overwrite"]
            config = cli.apply_overrides(cli.read_yaml(path), overrides, path)
            for stage, options in cli.plan_run(config, path):
                options = {**options, "bf16": False} if "bf16" in options else options  # written for a GPU
                cli.parse_stage(stage, [], options)
        else:
            if "--config" in rest:  # the docs' config files are the reader's own
                position = rest.index("--config")
                rest = rest[:position] + rest[position + 2 :]
            cli.parse_stage(command, rest)


def check_run_config(config: dict, source: str) -> None:
    """A ``whp run`` config: its stages are planned and each stage's options parse."""
    for stage, options in cli.plan_run(config, source):
        options = {**options, "bf16": False} if "bf16" in options else options  # written for a GPU
        cli.parse_stage(stage, [], options, f"{source} [{stage}]")


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_yaml_blocks_parse(page):
    for body in blocks(page, "yaml"):
        if includes(body) is None:
            value = yaml.safe_load(body)
            assert isinstance(value, (dict, list)), f"{page.name}: {body[:60]}"
            if isinstance(value, dict) and set(cli.RUN_STAGES) & set(value):
                check_run_config(value, page.name)
        else:
            for path, name in includes(body):
                value = yaml.safe_load(section(path, name))
                if isinstance(value, dict) and set(cli.RUN_STAGES) & set(value):
                    check_run_config(value, path)


@pytest.mark.parametrize("path", sorted((ROOT / "examples" / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_are_valid(path):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(path))  # unknown top-level keys raise here
    assert config.num_processes > 1 and not config.use_cpu
    # accelerate launch copies every key of the nested sections onto its own options (fsdp_config.x -> fsdp_x)
    # and silently ignores the rest: a misspelt key would be lost without this check.
    from accelerate.commands.launch import launch_command_parser

    options = {action.dest: action for action in launch_command_parser()._actions}
    nested = {**config.deepspeed_config, **{k if k.startswith("fsdp") else f"fsdp_{k}": v
                                            for k, v in config.fsdp_config.items()}}
    for key, value in nested.items():
        assert key in options, f"{path.name}: {key} is not an option of accelerate launch"
        if options[key].choices:
            assert str(value) in options[key].choices, f"{path.name}: {key}={value}"
