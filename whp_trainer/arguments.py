"""The options of the ``whp`` commands that are not a stage's own config: where the data comes from, discovery,
publishing and the demo. Kept apart from the stages so that ``whp COMMAND --help`` loads no data library."""

from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass
class DataArguments:
    """Where the stages read their inputs. Texts are local files or folders, or Hub dataset ids (see
    [`load_texts`][whp_trainer.data.load_texts])."""

    forget_data: str | None = field(
        default=None,
        metadata={"help": "The forget target: a .txt file or folder of .txt files (a file is one document), a .json/"
                  ".jsonl/.csv/.parquet file, a save_to_disk folder, or a Hub dataset id (org/name) (a row is one "
                  "document, or see --document_field)."},
    )
    forget_data_config: str | None = field(
        default=None, metadata={"help": "Configuration (subset) of a Hub forget dataset, as load_dataset's name."}
    )
    forget_data_split: str = field(
        default="train", metadata={"help": "Split of a Hub (or saved) forget dataset, e.g. train or train[:1000]."}
    )
    retain_data: str | None = field(
        default=None,
        metadata={"help": "Ordinary text the model must keep (perplexity, discovery reference): same forms as "
                  "--forget_data."},
    )
    retain_data_config: str | None = field(
        default=None, metadata={"help": "Configuration (subset) of a Hub retain dataset, e.g. wikitext-103-raw-v1."}
    )
    retain_data_split: str = field(default="train", metadata={"help": "Split of a Hub (or saved) retain dataset."})
    text_field: str = field(
        default="text", metadata={"help": "Text column of the forget (and retain) data; .txt files need none."}
    )
    retain_text_field: str | None = field(
        default=None, metadata={"help": "Text column of the retain data, when it differs from --text_field."}
    )
    document_field: str | None = field(
        default=None,
        metadata={"help": "Column of the forget data naming each row's document (a book, a chapter): its rows are "
                  "joined, in order, into one document, so that blocks of running text run across them. Default (and "
                  "for the retain and holdout data): a row is a document."},
    )
    blocks: str = field(
        default="document",
        metadata={"help": "What a block of max_length tokens of running text stays within: 'document' (the paper: "
                  "paragraphs packed together) or 'paragraph' (one block per blank-line separated paragraph). Read "
                  "alike by every stage, the evaluation and the retain data included.",
                  "choices": ["document", "paragraph"]},
    )
    anchors: str | None = field(
        default=None, metadata={"help": "Anchor dictionary file (.yaml, .json or .csv): anchor -> generic terms."}
    )
    reinforced_adapter: str | None = field(
        default=None, metadata={"help": "Folder of the reinforced adapter (the output of `whp reinforce`)."}
    )
    unlearned_adapter: str | None = field(
        default=None, metadata={"help": "Folder of the unlearning adapter (the output of `whp unlearn`)."}
    )
    probes: str | None = field(
        default=None, metadata={"help": "Familiarity probes (.json/.jsonl of {prompt, target}): measured by `whp evaluate`, and by "
                  "`whp unlearn` every logging_steps (familiarity, retain perplexity, next-token curves)."}
    )
    dataset_description: str | None = field(
        default=None, metadata={"help": "One line describing the forget target, for the model card."}
    )

    def forget_texts(self):
        """The forget target's documents (or paragraphs, with ``blocks="paragraph"``): a ``Dataset`` with ``text``."""
        return self.texts(self.forget_data, self.text_field, self.forget_data_config, self.forget_data_split,
                          self.document_field)

    def retain_texts(self):
        """The retain data's documents (or paragraphs), as the forget target's."""
        return self.texts(self.retain_data, self.retain_text_field or self.text_field, self.retain_data_config,
                          self.retain_data_split)

    def texts(self, source: str, text_field: str, config: str | None = None, split: str = "train",
              document_field: str | None = None):
        """The documents (or paragraphs, with ``blocks="paragraph"``) of ``source``."""
        from .data import load_texts

        return load_texts(source, text_field, config, split, blocks=self.blocks, document_field=document_field)

    def hub_datasets(self) -> list[str]:
        """The Hub ids of the training (forget) data, for the model card's ``datasets`` metadata."""
        from .data import is_hub_id

        return [self.forget_data] if self.forget_data and is_hub_id(self.forget_data) else []


@dataclass
class DiscoverArguments:
    """``whp anchors``: propose anchors for a person to review."""

    output: str = field(default="anchors.candidates.yaml", metadata={"help": "Where to write the candidates (YAML)."})
    method: str = field(
        default="statistics",
        metadata={"help": "'statistics' (reinforced boost × frequency vs retain text), 'llm', or 'both'.",
                  "choices": ["statistics", "llm", "both"]},
    )
    top_k: int = field(default=200, metadata={"help": "statistics: how many expressions to propose."})
    max_words: int = field(default=3, metadata={"help": "statistics: longest expression, in words."})
    llm_url: str | None = field(
        default=None, metadata={"help": "llm: base URL of an OpenAI-compatible server (…/v1); else the local model."}
    )
    llm_model: str | None = field(default=None, metadata={"help": "llm: model name sent to the server."})
    llm_api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "llm: environment variable of the key."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow a base model and tokenizer that ship their own code from the Hub."}
    )

    def __post_init__(self):
        choices = next(f.metadata["choices"] for f in fields(self) if f.name == "method")
        if self.method not in choices:
            raise ValueError(f"DiscoverArguments.method={self.method!r}: expected one of {choices}")


@dataclass
class PublishArguments:
    """``whp export`` and ``whp push``: the unlearned model, as an adapter or merged into its base."""

    folder: str | None = field(default=None, metadata={"help": "The folder to publish (an unlearn output, or a merged export)."})
    form: str = field(default="adapter", metadata={"help": "'adapter' or 'merged'.", "choices": ["adapter", "merged"]})
    repo_id: str | None = field(default=None, metadata={"help": "push: the Hub model repo, e.g. user/llama-2-7b-whp."})
    private: bool = field(default=False, metadata={"help": "push: create the repo private."})
    revision: str | None = field(default=None, metadata={"help": "push: branch to push to (created if missing)."})
    commit_message: str | None = field(default=None, metadata={"help": "push: the commit message."})
    dictionary_file: str | None = field(default=None, metadata={"help": "push: also upload this anchor dictionary."})
    eval_report: str | None = field(default=None, metadata={"help": "push: also upload this evaluation report (JSON)."})
    include_reinforced: bool = field(
        default=False,
        metadata={"help": "push: also upload the run's reinforced adapter (to reinforced/) — the MORE knowledgeable "
                  "adapter, with which anyone can undo the unlearning. Rarely wise."},
    )
    token: str | None = field(
        default=None, metadata={"help": "push: a Hub token with write access (default: HF_TOKEN or the cached login)."}
    )
    merged_dir: str | None = field(default=None, metadata={"help": "export: where to write the merged model."})
    base_model: str | None = field(
        default=None, metadata={"help": "export: full-precision base to merge into (default: the adapter's base)."}
    )
    gguf_file: str | None = field(
        default=None, metadata={"help": "export: the base is this GGUF file in --base_model (or in the adapter's base "
                                "folder), loaded dequantized."}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "export: allow a base model and tokenizer that ship their own code."}
    )


@dataclass
class DemoArguments:
    """``whp demo``: the whole pipeline on an invented saga, on a CPU, in a few minutes."""

    output_dir: str = field(default="whp-demo", metadata={"help": "Where the stages write their outputs."})
    size: str = field(
        default="full", metadata={"help": "'full' (the demo) or 'tiny' (seconds; for tests).", "choices": ["full", "tiny"]}
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Cache of the generated texts and base model (default: $WHP_CACHE or ~/.cache)."}
    )
    method: str = field(
        default="auto",
        metadata={"help": "'auto' (the default path of whp run): the recommended objective with alpha auto (teacher "
                  "sweep, stopping rule; the holdout saga text, no oracle); 'paper': the method as published; "
                  "'recommended': the setting docs/results.md recommends at a fixed alpha (RECOMMENDED_SETTING, "
                  "retain regularisation on the demo's ordinary text). Each writes its own unlearned and evaluation "
                  "folders (the paper's unsuffixed, the others -auto and -recommended).",
                  "choices": ["auto", "paper", "recommended"]},
    )
    seed: int = field(default=42, metadata={"help": "Seed of the reinforce and unlearn runs (and of alpha auto's samples)."})
    load_in_4bit: bool = field(
        default=False,
        metadata={"help": "QLoRA: every stage loads the base (and the evaluation the oracle) in 4-bit NF4 "
                  "(bitsandbytes); the evaluation then also puts each adapter on the full-precision base "
                  "(the full_precision attack)."},
    )
