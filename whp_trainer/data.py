"""Reading the texts the stages work on, as a ``datasets.Dataset`` with one ``text`` column.

A source is a local file or folder, or a Hugging Face Hub dataset id (as TRL's ``--dataset_name`` is):

| source | rows |
| --- | --- |
| a ``.txt`` file, or a folder of ``.txt`` files | one per file: the file is one document, its text as written |
| a ``.json``/``.jsonl``/``.csv``/``.parquet`` file | one per record |
| a folder written by ``Dataset.save_to_disk`` | its rows (``split`` of a ``DatasetDict``) |
| any other folder, or a Hub id such as ``"org/name"`` | ``datasets.load_dataset(source, config, split=split)`` |

Each row is one document: rows sharing a value of ``document_field`` (a book id, a chapter's title) are joined, in
order, into one, their texts separated by a blank line. Documents are cut into blocks of running text later
(`whp_trainer.collator.split_into_blocks`): a block never crosses a document. With ``blocks="paragraph"`` every
blank-line separated paragraph is a row of its own instead (one block per paragraph: the layout before documents).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path

import datasets
import pyarrow
from datasets import Dataset, DatasetDict, load_dataset, load_from_disk
from datasets.exceptions import DataFilesNotFoundError, DatasetNotFoundError, DatasetsError
from huggingface_hub.utils import validate_repo_id

from .dictionary import read_text

FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
SAVED_DATASET_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")  # what save_to_disk writes
BLOCK_UNITS = ("document", "paragraph")  # what a block of running text stays within
PARAGRAPH_BREAK = "\n\n"  # between the rows of one document, as between the paragraphs of a .txt file


def load_texts(
    source: str | os.PathLike,
    text_field: str = "text",
    config: str | None = None,
    split: str = "train",
    blocks: str = "document",
    document_field: str | None = None,
) -> Dataset:
    """The documents of ``source`` (a path or a Hub dataset id, see the module's table), one per row, with their
    text in ``text``.

    Args:
        source: a local file or folder, or a Hub dataset id.
        text_field: the column holding the text (not used for ``.txt``).
        config: the dataset's configuration (``load_dataset``'s ``name``), for Hub ids and dataset folders.
        split: the split to read (``"train"``, ``"test[:10%]"`` …), for Hub ids and dataset folders.
        blocks: ``"document"`` (a file, a row, or the rows of one ``document_field`` value are one document) or
            ``"paragraph"`` (every blank-line separated paragraph is a row of its own).
        document_field: the column naming each row's document; rows of one document are joined in order.

    Raises:
        FileNotFoundError: ``source`` is neither a local path nor a valid Hub id.
        ValueError: the data holds no ``text_field`` (or ``document_field``) column (the error lists the columns),
            or no ``.txt`` text, or ``blocks`` is neither unit.
    """
    if blocks not in BLOCK_UNITS:
        raise ValueError(f"{source}: blocks={blocks!r}: expected one of {list(BLOCK_UNITS)}")
    path = Path(source)
    check_source(str(source))
    if path.suffix == ".txt" or (path.is_dir() and any(path.glob("*.txt"))):
        files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
        return split_paragraphs(documents(files, source)) if blocks == "paragraph" else documents(files, source)
    if path.suffix == ".jsonl" and path.is_file():
        check_json_lines(path)
    if path.is_file() and path.suffix in FILE_BUILDERS:
        dataset = data_file(path)
    elif path.is_dir() and any((path / name).is_file() for name in SAVED_DATASET_FILES):
        dataset = saved_split(load_from_disk(str(path)), split, source)
    elif path.is_dir():  # a dataset repo's layout (data files, a README.md with configs), read as the Hub would
        dataset = dataset_folder(path, config, split)
    elif path.exists():
        raise ValueError(f"{source}: unsupported data file; expected .txt, .json, .jsonl, .csv or .parquet")
    else:
        dataset = hub_dataset(str(source), config, split)
    dataset = text_column(dataset, text_field, source, document_field)
    if document_field:
        dataset = joined_documents(dataset, document_field)
    return split_paragraphs(dataset) if blocks == "paragraph" else dataset


def data_file(path: Path) -> Dataset:
    """The records of one .json/.jsonl/.csv/.parquet file; an error naming it when it cannot be parsed."""
    try:
        with quiet_datasets():
            return load_dataset(FILE_BUILDERS[path.suffix], data_files=str(path), split="train")
    except (ValueError, DatasetsError, pyarrow.ArrowException) as error:  # corrupt or truncated: the cause, named
        cause = error.__cause__ or error
        raise ValueError(f"{path}: not a readable {path.suffix} file ({type(cause).__name__}: {cause})") from None


def dataset_folder(path: Path, config: str | None, split: str) -> Dataset:
    """A folder laid out as a dataset repo; an error naming it, and what it holds, when it holds no data file."""
    try:
        return load_dataset(str(path), config, split=split)
    except DataFilesNotFoundError:
        found = sorted({file.suffix or file.name for file in path.rglob("*") if file.is_file()})
        raise ValueError(f"{path}: a folder without a data file whp reads (.txt, .json, .jsonl, .csv, .parquet, or a "
                         f"save_to_disk dataset); it holds {', '.join(found) or 'no file'}") from None


def hub_dataset(source: str, config: str | None, split: str) -> Dataset:
    """``load_dataset(source, config, split=split)`` of a Hub id (a download shows ``datasets``' progress bars)."""
    try:
        return load_dataset(source, config, split=split)
    except (DatasetNotFoundError, ConnectionError) as error:
        raise FileNotFoundError(f"{source}: no such file or folder, nor a Hub dataset that can be loaded ({error})") from error


def documents(files: list[Path], source) -> Dataset:
    """One row per non-empty file: its text as written (paragraph breaks kept), stripped at both ends; a file that
    is not UTF-8 is named, with the byte at fault."""
    texts = [read_text(file).strip() for file in files]  # read in text mode: line ends are "\n"
    texts = [text for text in texts if text]
    if not texts:
        raise ValueError(f"{source}: no text in the .txt file(s)")
    return Dataset.from_dict({"text": texts})


def joined_documents(dataset: Dataset, document_field: str) -> Dataset:
    """One row per value of ``document_field`` (in order of first appearance): its rows' texts, in order, joined by
    a blank line."""
    parts: dict = {}
    for document, text in zip(dataset[document_field], dataset["text"]):
        if text and text.strip():
            parts.setdefault(document, []).append(text.strip())
    return Dataset.from_dict({"text": [PARAGRAPH_BREAK.join(texts) for texts in parts.values()]})


def split_paragraphs(dataset: Dataset) -> Dataset:
    """One row per non-empty blank-line separated paragraph of each row, stripped."""
    parts = [part.strip() for text in dataset["text"] for part in re.split(r"\n\s*\n", text or "")]
    return Dataset.from_dict({"text": [part for part in parts if part]})


def check_json_lines(path: Path) -> None:
    """Every non-blank line of a .jsonl file is a JSON object; the error names the file and the line."""
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not valid JSON ({error.msg}, column {error.colno})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}")


def saved_split(dataset: Dataset | DatasetDict, split: str, source) -> Dataset:
    if isinstance(dataset, Dataset):
        return dataset
    if split not in dataset:
        raise ValueError(f"{source}: no split {split!r} (splits: {sorted(dataset)}); set the split argument")
    return dataset[split]


def text_column(dataset: Dataset, text_field: str, source, document_field: str | None = None) -> Dataset:
    """``dataset`` reduced to its ``text_field`` column, named ``text`` (and its ``document_field`` column, if any)."""
    for column, argument in ((text_field, "text field"), (document_field, "document field")):
        if column and column not in dataset.column_names:
            raise ValueError(
                f"{source}: no column {column!r} (columns: {dataset.column_names}); set the {argument} argument"
            )
    dataset = dataset.select_columns([text_field, *([document_field] if document_field else [])])
    return dataset.rename_column(text_field, "text") if text_field != "text" else dataset


def is_hub_id(source: str) -> bool:
    """Whether ``source`` is not a local path but can name a Hub dataset (``"name"`` or ``"org/name"``).

    A missing path whose folder exists (``data/hp_books`` beside a ``data/`` folder) is a local path, not an id."""
    path = Path(source)
    if path.exists() or source.startswith((".", "/", "~")) or path.suffix in (".txt", *FILE_BUILDERS):
        return False
    if path.parent != Path() and path.parent.is_dir():
        return False
    try:
        validate_repo_id(source)
    except ValueError:
        return False
    return True


def check_source(source: str) -> None:
    """Raise ``FileNotFoundError`` when ``source`` is neither an existing path nor a possible Hub dataset id."""
    if not Path(source).exists() and not is_hub_id(source):
        raise FileNotFoundError(f"{source}: no such file or folder")


@contextlib.contextmanager
def quiet_datasets():
    """No ``datasets`` progress bars while reading small local files (they are read in a moment)."""
    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()
