"""Texts from local files, saved datasets, dataset folders and Hub ids; models by id and with their own code."""

import dataclasses
import json

import pytest
import torch
from conftest import CORPUS, LORA
from datasets import Dataset, DatasetDict
from huggingface_hub import ModelCard
from peft import LoraConfig, get_peft_model
from trl import ModelConfig

from whp_trainer import UnlearnConfig, UnlearnTrainer, data, pipeline
from whp_trainer.arguments import DataArguments, PublishArguments
from whp_trainer.collator import read_paragraphs
from whp_trainer.data import load_texts
from whp_trainer.hub import write_model_card
from whp_trainer.loading import load_base_model, load_tokenizer
from whp_trainer.toy import tiny_llama

MESSY = "  first paragraph\nline two\n\n\n\nsecond\r\n\r\nthird  \n\n \n\nlast\n"


def test_a_txt_file_is_one_document_and_paragraphs_only_when_asked(tmp_path):
    (tmp_path / "a.txt").write_text(MESSY, encoding="utf-8")
    (tmp_path / "b.txt").write_text("b one\n\nb two", encoding="utf-8")
    assert list(load_texts(tmp_path / "a.txt")["text"]) == [MESSY.replace("\r\n", "\n").strip()]
    assert list(load_texts(tmp_path)["text"]) == [MESSY.replace("\r\n", "\n").strip(), "b one\n\nb two"]
    paragraphs = load_texts(tmp_path / "a.txt", blocks="paragraph")["text"]
    assert list(paragraphs) == read_paragraphs(tmp_path / "a.txt") == ["first paragraph\nline two", "second", "third", "last"]
    assert list(load_texts(tmp_path, blocks="paragraph")["text"]) == list(paragraphs) + ["b one", "b two"]
    with pytest.raises(ValueError, match="blocks='chapter': expected one of"):
        load_texts(tmp_path, blocks="chapter")


def test_rows_of_one_document_are_joined_in_order(tmp_path):
    rows = [{"book": "b", "text": "B1"}, {"book": "a", "text": "A1"}, {"book": "b", "text": "B2\n\nB3"},
            {"book": "a", "text": " "}]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    assert list(load_texts(tmp_path / "rows.jsonl")["text"]) == ["B1", "A1", "B2\n\nB3", " "]
    assert list(load_texts(tmp_path / "rows.jsonl", document_field="book")["text"]) == ["B1\n\nB2\n\nB3", "A1"]
    assert list(load_texts(tmp_path / "rows.jsonl", blocks="paragraph")["text"]) == ["B1", "A1", "B2", "B3"]
    with pytest.raises(ValueError, match=r"rows.jsonl: no column 'chapter' \(columns: .*document field"):
        load_texts(tmp_path / "rows.jsonl", document_field="chapter")


def test_records_and_saved_datasets_give_their_text_column(tmp_path):
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps({"body": t, "id": i}) for i, t in enumerate(CORPUS)))
    assert list(load_texts(tmp_path / "rows.jsonl", "body")["text"]) == CORPUS
    with pytest.raises(ValueError, match=r"rows.jsonl: no column 'text' \(columns: \['body', 'id'\]\)"):
        load_texts(tmp_path / "rows.jsonl")
    DatasetDict({"train": Dataset.from_dict({"text": CORPUS[:2]}), "test": Dataset.from_dict({"text": CORPUS[2:3]})}
                ).save_to_disk(tmp_path / "saved")
    assert list(load_texts(tmp_path / "saved", split="test")["text"]) == CORPUS[2:3]
    with pytest.raises(ValueError, match=r"no split 'dev' \(splits: \['test', 'train'\]\)"):
        load_texts(tmp_path / "saved", split="dev")


def test_a_dataset_folder_loads_its_config_and_split_as_the_hub_would(tmp_path):
    """A folder in a Hub dataset repo's layout goes through the same ``load_dataset(id, config, split=)`` call."""
    repo = tmp_path / "hp-books"
    (repo / "books").mkdir(parents=True)
    Dataset.from_dict({"chapter": CORPUS[:4]}).to_parquet(repo / "books" / "train.parquet")
    Dataset.from_dict({"chapter": CORPUS[4:]}).to_parquet(repo / "books" / "test.parquet")
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: books\n  data_files:\n  - split: train\n    path: books/train.parquet\n"
        "  - split: test\n    path: books/test.parquet\n---\n", encoding="utf-8")
    texts = load_texts(repo, "chapter", config="books", split="test")
    assert list(texts["text"]) == CORPUS[4:] and texts.column_names == ["text"]


def test_a_hub_id_reaches_load_dataset_with_its_config_and_split(monkeypatch):
    calls = []

    def recording_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return Dataset.from_dict({"content": CORPUS, "title": ["t"] * len(CORPUS)})

    monkeypatch.setattr(data, "load_dataset", recording_load_dataset)
    texts = load_texts("someone/hp-books", "content", config="books", split="train[:10]")
    assert calls == [(("someone/hp-books", "books"), {"split": "train[:10]"})]
    assert list(texts["text"]) == CORPUS and texts.column_names == ["text"]


def test_what_is_neither_a_path_nor_a_hub_dataset_is_named(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nope.txt: no such file or folder"):
        load_texts(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match="data/hp_books: no such file or folder, nor a Hub dataset"):
        load_texts("data/hp_books")  # offline here: what a mistyped relative folder gives without a data/ folder
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    with pytest.raises(FileNotFoundError, match="^data/hp_books: no such file or folder$"):
        load_texts("data/hp_books")  # data/ exists: a local path, never sent to the Hub
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(ValueError, match="unsupported data file"):
        load_texts(tmp_path / "notes.md")


def test_the_stages_train_on_a_hub_dataset_and_the_card_names_it(tokenizer, tmp_path, monkeypatch):
    from whp_trainer.reinforce import ReinforceConfig

    calls = []
    monkeypatch.setattr(data, "load_dataset", lambda *a, **k: calls.append((a, k)) or Dataset.from_dict({"text": CORPUS}))
    tiny_llama(tokenizer).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    output = pipeline.reinforce(
        DataArguments(forget_data="someone/hp-books", forget_data_config="books"),
        ModelConfig(model_name_or_path=str(tmp_path / "base"), lora_r=4, lora_target_modules=["q_proj"]),
        ReinforceConfig(output_dir=str(tmp_path / "reinforced"), max_steps=1, per_device_train_batch_size=2,
                        max_length=32, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True),
    )
    assert calls == [(("someone/hp-books", "books"), {"split": "train"})]
    assert (tmp_path / "reinforced" / "adapter_config.json").is_file() and output == str(tmp_path / "reinforced")

    (tmp_path / "anchors.yaml").write_text("Harry: Jon\n", encoding="utf-8")
    data_args = DataArguments(forget_data="someone/hp-books", forget_data_config="books",
                                       reinforced_adapter=output, anchors=str(tmp_path / "anchors.yaml"))
    unlearned = pipeline.unlearn(
        data_args, ModelConfig(model_name_or_path=str(tmp_path / "base"), lora_r=4, lora_target_modules=["q_proj"]),
        UnlearnConfig(output_dir=str(tmp_path / "unlearned"), max_steps=1, per_device_train_batch_size=2,
                      max_length=32, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True),
    )
    assert ModelCard.load(f"{unlearned}/README.md").data.datasets == ["someone/hp-books"]


# --- models by id -------------------------------------------------------------------------------------------------

CUSTOM_CODE = '''
from transformers import LlamaConfig, LlamaForCausalLM


class HouseConfig(LlamaConfig):
    model_type = "house-llama"


class HouseForCausalLM(LlamaForCausalLM):
    config_class = HouseConfig
'''


@pytest.fixture
def custom_code_model(tokenizer, tmp_path):
    """A local model whose architecture lives in its own folder's code, as remote-code Hub models do."""
    folder = tmp_path / "house"
    tiny_llama(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "house.py").write_text(CUSTOM_CODE, encoding="utf-8")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="house-llama", architectures=["HouseForCausalLM"],
                  auto_map={"AutoConfig": "house.HouseConfig", "AutoModelForCausalLM": "house.HouseForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def test_trust_remote_code_reaches_the_model_loaders(custom_code_model):
    model_args = ModelConfig(model_name_or_path=str(custom_code_model))
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_base_model(model_args)
    assert type(load_base_model(model_args, trust_remote_code=True)).__name__ == "HouseForCausalLM"
    assert load_tokenizer(model_args, trust_remote_code=True).pad_token is not None
    args = UnlearnConfig(output_dir="unused", report_to=[], use_cpu=True, trust_remote_code=True)
    trainer = UnlearnTrainer(model=str(custom_code_model), args=args, anchors={"Harry": "Jon"},
                             peft_config=LoraConfig(**LORA))
    assert type(trainer.model.get_base_model()).__name__ == "HouseForCausalLM"

    get_peft_model(load_base_model(model_args, trust_remote_code=True), LoraConfig(**LORA)).save_pretrained(
        custom_code_model.parent / "adapter")
    write_model_card(custom_code_model.parent / "adapter", args, model_name="house")  # as UnlearnTrainer saves it
    export = PublishArguments(folder=str(custom_code_model.parent / "adapter"), base_model=str(custom_code_model),
                              merged_dir=str(custom_code_model.parent / "merged"))
    with pytest.raises(ValueError, match="trust_remote_code"):
        pipeline.export(export)
    pipeline.export(dataclasses.replace(export, trust_remote_code=True), overwrite=True)
    assert json.loads((custom_code_model.parent / "merged" / "config.json").read_text())["auto_map"]


def test_unlearn_trainer_takes_a_model_id_with_model_init_kwargs(tokenizer, tmp_path):
    tiny_llama(tokenizer).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    args = UnlearnConfig(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, max_steps=1, max_length=32,
                         per_device_train_batch_size=2, save_strategy="no", disable_tqdm=True,
                         model_init_kwargs='{"dtype": "bfloat16"}')  # a JSON string, as from the command line
    trainer = UnlearnTrainer(model=str(tmp_path / "base"), args=args, anchors={"Harry": "Jon"},
                             peft_config=LoraConfig(**LORA), train_dataset=Dataset.from_dict({"text": CORPUS}))
    assert trainer.model.get_base_model().dtype == torch.bfloat16
    assert trainer.processing_class.get_vocab() == tokenizer.get_vocab()  # the tokenizer came with the id
    trainer.train()
    assert trainer.state.global_step == 1
