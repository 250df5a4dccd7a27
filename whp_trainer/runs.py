"""Output folders of whp's stages: who made them, whether they are current, what ``--overwrite`` may delete, and
which checkpoint an interrupted run resumes from.

A stage writes ``.whp_stage.json`` (stage and fingerprint of its settings and inputs) when it starts, and
``whp_stage.json`` (the same, plus the size and modification time of every file it wrote) when it finishes. These
markers are the only proof that whp made a folder: a non-empty folder without one is never written into or
removed, and ``--overwrite`` deletes only the files a marker lists (unchanged since) and ``checkpoint-*`` folders.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

from .dictionary import read_json_object

logger = logging.getLogger(__name__)

STAGE_FILE = "whp_stage.json"
STARTED_FILE = f".{STAGE_FILE}"
MARKERS = (STAGE_FILE, STARTED_FILE)
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"  # written last into a checkpoint by Trainer._save_checkpoint


class OutputFolderError(FileExistsError):
    """An output folder that a stage must not write into (with what to do instead)."""


def fingerprint(*parts) -> str:
    """A hash of a stage's settings (dataclasses; secrets and logging dirs left out) and of its inputs' digests."""
    digest = hashlib.sha256()
    for part in parts:
        if dataclasses.is_dataclass(part):
            part = part.to_dict() if hasattr(part, "to_dict") else dataclasses.asdict(part)
            part = {key: value for key, value in part.items() if "logging_dir" not in key and not key.endswith("_token")}
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def file_digest(path: str | os.PathLike | None) -> str | None:
    """sha256 of a file, or of a folder's files and their relative paths (None when there is no path)."""
    if not path:
        return None
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update((file.relative_to(path) if path.is_dir() else Path(file.name)).as_posix().encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def read_marker(folder: Path) -> dict | None:
    """The finished marker, else the started one (with ``"finished": False``), else None."""
    for name, finished in ((STAGE_FILE, True), (STARTED_FILE, False)):
        if (folder / name).is_file():
            try:
                return {**json.loads((folder / name).read_text(encoding="utf-8")), "finished": finished}
            except (json.JSONDecodeError, UnicodeDecodeError):
                return {"stage": None, "fingerprint": None, "finished": finished}
    return None


def has_work(folder: Path) -> bool:
    """Whether a folder holds anything but whp's markers (a checkpoint, an output, a user's file)."""
    return folder.is_dir() and any(entry.name not in MARKERS for entry in folder.iterdir())


def begin_stage(output_dir: str | os.PathLike, stage: str, print_: str, overwrite: bool = False) -> bool:
    """Prepare ``output_dir`` for ``stage``; return False when its output is already current (nothing to do).

    - absent or empty: created; a started marker that left nothing behind (a run that failed before its first
      checkpoint) counts as empty;
    - started with the same settings: kept, so the run resumes from its last complete checkpoint;
    - finished with the same settings: skipped (False);
    - with ``overwrite``, any run of the same stage: what it wrote is deleted (see `clear_stage_output`), and
      the new run starts from scratch; without it, a run with other settings is refused;
    - made by another stage, or not by whp (no marker): always refused, whatever ``overwrite`` says.
    """
    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"whp {stage}: output_dir {folder} is a file; choose a folder")
    marker = read_marker(folder)
    if marker is None and has_work(folder):
        raise OutputFolderError(
            f"whp {stage}: output_dir {folder} is a non-empty folder that whp did not create; whp never writes "
            "into or deletes such a folder, even with --overwrite. Choose a new or empty output_dir."
        )
    if marker is not None and marker.get("stage") != stage and (marker["finished"] or has_work(folder)):
        raise OutputFolderError(
            f"whp {stage}: output_dir {folder} holds the output of `whp {marker.get('stage')}`, not of `whp {stage}`; "
            "--overwrite never replaces another stage's output. Choose another output_dir."
        )
    same = marker is not None and marker.get("fingerprint") == print_
    if marker is not None and marker["finished"] and same and not overwrite:
        logger.warning("whp %s: %s is up to date, skipped (pass --overwrite to redo it)", stage, folder)
        return False
    if marker is not None and has_work(folder):
        if overwrite:
            clear_stage_output(folder, marker)
        elif not same:
            raise OutputFolderError(
                f"whp {stage}: {folder} holds the output of a run with other settings; choose another output_dir, "
                "or pass --overwrite to delete that run's files and start from scratch"
            )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / STAGE_FILE).unlink(missing_ok=True)
    (folder / STARTED_FILE).write_text(json.dumps({"stage": stage, "fingerprint": print_}), encoding="utf-8")
    return True


def finish_stage(output_dir: str | os.PathLike, stage: str, print_: str) -> None:
    """Mark ``output_dir`` as the finished output of ``stage``, listing the files it holds now."""
    folder = Path(output_dir)
    files = {
        path.relative_to(folder).as_posix(): file_stamp(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name not in MARKERS and not in_checkpoint(path, folder)
    }
    record = {"stage": stage, "fingerprint": print_, "files": files}
    (folder / STAGE_FILE).write_text(json.dumps(record, indent=1), encoding="utf-8")
    (folder / STARTED_FILE).unlink(missing_ok=True)


def file_stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def in_checkpoint(path: Path, folder: Path) -> bool:
    return bool(CHECKPOINT.match(path.relative_to(folder).parts[0]))


def clear_stage_output(folder: Path, marker: dict) -> None:
    """Delete what a stage run wrote into ``folder``: its ``checkpoint-*`` folders and the files its finished marker
    lists, if unchanged since. Anything else (a file a user added or edited) stays, and is named in a warning."""
    for entry in folder.iterdir():
        if entry.is_dir() and CHECKPOINT.match(entry.name):
            shutil.rmtree(entry)
    emptied = set()
    for relative, stamp in (marker.get("files") or {}).items():
        path = folder / relative
        if path.is_file() and file_stamp(path) == list(stamp):
            path.unlink()
            emptied.update(parent for parent in path.parents if folder in parent.parents)
    for directory in sorted(emptied, key=lambda p: -len(p.parts)):  # subfolders that held only whp's files
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
    for name in MARKERS:
        (folder / name).unlink(missing_ok=True)
    kept = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    if kept:
        logger.warning("whp: --overwrite kept %d file(s) whp did not write in %s: %s", len(kept), folder, kept[:10])


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest ``checkpoint-N`` whose trainer state was written (the Trainer writes it last); None if none.

    A checkpoint cut short by a kill lacks it (or holds it half-written) and is passed over, with a note.
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    checkpoints = sorted(
        (int(match.group(1)), entry)
        for entry in folder.iterdir()
        if entry.is_dir() and (match := CHECKPOINT.match(entry.name))
    )
    for _, checkpoint in reversed(checkpoints):
        if is_complete_checkpoint(checkpoint):
            return str(checkpoint)
        logger.warning("whp: %s is incomplete (the run was interrupted while writing it); passed over", checkpoint)
    if checkpoints:
        logger.warning("whp: no complete checkpoint in %s; training starts from scratch", folder)
    return None


def is_complete_checkpoint(checkpoint: Path) -> bool:
    try:
        json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


REINFORCED_RECORD = "whp_reinforced.json"  # where an unlearning run's reinforced adapter came from (kept local)


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def adapter_digest(folder: str | os.PathLike) -> str:
    """sha256 of an adapter folder's adapter files only (not its checkpoints or optimizer state, which may be large)."""
    digest = hashlib.sha256()
    for name in ADAPTER_FILES:
        if (Path(folder) / name).is_file():
            digest.update(name.encode())
            digest.update(file_digest(Path(folder) / name).encode())
    return digest.hexdigest()


def record_reinforced_adapter(folder: str | os.PathLike, source: str | os.PathLike | None) -> None:
    """Write where the run's reinforced adapter is (an absolute path, or a Hub id) and the hash of its adapter files, so
    evaluation finds it without a copy of it in the run's folder (which would be uploaded with it)."""
    local = source is not None and Path(source).is_dir()
    record = {
        "source": None if source is None else str(Path(source).resolve()) if local else str(source),
        "sha256": adapter_digest(source) if local else None,
    }
    (Path(folder) / REINFORCED_RECORD).write_text(json.dumps(record, indent=1), encoding="utf-8")


def recorded_reinforced_adapter(folder: str | os.PathLike) -> str | None:
    """The reinforced adapter an unlearning run in ``folder`` used, checked against its recorded hash; None when
    the run did not record one (or used one held only in memory)."""
    path = Path(folder) / REINFORCED_RECORD
    if not path.is_file():
        return None
    record = read_json_object(path)
    source = record.get("source")
    if source and record.get("sha256") and (not Path(source).is_dir() or adapter_digest(source) != record["sha256"]):
        raise ValueError(
            f"the reinforced adapter {source}, recorded in {path}, has changed (or is gone) since the unlearning run; "
            "pass the one the run used with --reinforced_adapter"
        )
    return source
