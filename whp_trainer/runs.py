"""Output folders of whp's stages: who made them, whether they are current, what ``--overwrite`` may delete, and
which checkpoint an interrupted run resumes from.

A stage writes ``.whp_stage.json`` (stage and fingerprint of its settings and inputs, and the files already in the
folder) when it starts, and ``whp_stage.json`` (the same, plus the size and modification time of every file it
wrote) when it finishes. These markers are the only proof that whp made a folder: a non-empty folder without one is
never written into or removed, and ``--overwrite`` deletes only the files a marker lists (unchanged since, inside
the folder) and ``checkpoint-*`` folders. While a stage runs, ``.whp_lock.json`` (process id, host, start time)
keeps every other run out of the folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
from pathlib import Path

from .dictionary import read_json_object

logger = logging.getLogger(__name__)

STAGE_FILE = "whp_stage.json"
STARTED_FILE = f".{STAGE_FILE}"
MARKERS = (STAGE_FILE, STARTED_FILE)
LOCK_FILE = ".whp_lock.json"  # the live run that holds the folder (never listed, never uploaded)
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"  # written last into a checkpoint by Trainer._save_checkpoint


class OutputFolderError(FileExistsError):
    """An output folder that a stage must not write into (with what to do instead)."""


def fingerprint(*parts, added: dict | None = None) -> str:
    """A hash of a stage's settings (dataclasses; secrets and logging dirs left out) and of its inputs' digests.
    ``added``: settings fields added in a later version, left out while they hold the value given here (the old
    behaviour), so that the runs made before them keep their fingerprint."""
    digest = hashlib.sha256()
    for part in parts:
        if dataclasses.is_dataclass(part):
            part = part.to_dict() if hasattr(part, "to_dict") else dataclasses.asdict(part)
            part = {key: value for key, value in part.items() if "logging_dir" not in key and not key.endswith("_token")
                    and not (key in (added or {}) and value == added[key])}
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
    return folder.is_dir() and any(entry.name not in (*MARKERS, LOCK_FILE) for entry in folder.iterdir())


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
    if read_marker(folder) is None and has_work(folder):
        raise OutputFolderError(
            f"whp {stage}: output_dir {folder} is a non-empty folder that whp did not create; whp never writes "
            "into or deletes such a folder, even with --overwrite. Choose a new or empty output_dir."
        )
    folder.mkdir(parents=True, exist_ok=True)
    acquire_lock(folder, stage)
    try:
        begun = prepare_stage(folder, stage, print_, overwrite)
    except BaseException:
        release_lock(folder)
        raise
    if not begun:
        release_lock(folder)
    return begun


def prepare_stage(folder: Path, stage: str, print_: str, overwrite: bool) -> bool:
    """`begin_stage`'s decision, taken while this run holds the folder's lock."""
    marker = read_marker(folder)
    if marker is not None and marker.get("stage") != stage and (marker["finished"] or has_work(folder)):
        raise OutputFolderError(
            f"whp {stage}: output_dir {folder} holds the output of `whp {marker.get('stage')}`, not of `whp {stage}`; "
            "--overwrite never replaces another stage's output. Choose another output_dir."
        )
    same = marker is not None and marker.get("fingerprint") == print_
    if marker is not None and marker["finished"] and same and not overwrite:
        logger.warning("whp %s: %s is up to date, skipped (pass --overwrite to redo it)", stage, folder)
        return False
    check_no_link_out(folder, stage)
    if marker is not None and has_work(folder):
        if overwrite:
            clear_stage_output(folder, marker, stage)
        elif not same:
            raise OutputFolderError(
                f"whp {stage}: {folder} holds the output of a run with other settings; choose another output_dir, "
                "or pass --overwrite to delete that run's files and start from scratch"
            )
    (folder / STAGE_FILE).unlink(missing_ok=True)
    present = {relative: file_stamp(folder / relative) for relative in present_files(folder)}
    started = {"stage": stage, "fingerprint": print_, "present": present}
    (folder / STARTED_FILE).write_text(json.dumps(started), encoding="utf-8")
    return True


def finish_stage(output_dir: str | os.PathLike, stage: str, print_: str) -> None:
    """Mark ``output_dir`` as the finished output of ``stage``, listing the files this stage wrote: those there now
    that were not there, or not so, when it (re)started (a file a user added, untouched since, is never listed)."""
    folder = Path(output_dir)
    started = read_marker(folder) or {}
    before = (started.get("present") or {}) if not started.get("finished", True) else {}
    now = {relative: file_stamp(folder / relative) for relative in present_files(folder)}
    files = {relative: stamp for relative, stamp in now.items() if before.get(relative) != stamp}
    record = {"stage": stage, "fingerprint": print_, "files": files}
    (folder / STAGE_FILE).write_text(json.dumps(record, indent=1), encoding="utf-8")
    (folder / STARTED_FILE).unlink(missing_ok=True)
    release_lock(folder)


def present_files(folder: Path) -> list[str]:
    """The files in ``folder`` (relative, sorted) but whp's markers, its lock and the ``checkpoint-*`` folders."""
    return [
        path.relative_to(folder).as_posix()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name not in (*MARKERS, LOCK_FILE) and not in_checkpoint(path, folder)
    ]


def file_stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def in_checkpoint(path: Path, folder: Path) -> bool:
    return bool(CHECKPOINT.match(path.relative_to(folder).parts[0]))


def clear_stage_output(folder: Path, marker: dict, stage: str = "") -> None:
    """Delete what a stage run wrote into ``folder``: its ``checkpoint-*`` folders and the files its finished marker
    lists, if unchanged since. Anything else (a file a user added) stays, and is named in a warning. Refused, before
    anything is deleted, when a listed file was changed since (the new run would write over it) or when an entry
    points outside the folder."""
    listed = confined_entries(folder, marker.get("files") or {}, stage)
    edited = [relative for relative, stamp in listed.items()
              if (folder / relative).is_symlink() or (folder / relative).exists() and stamp_of(folder / relative) != stamp]
    if edited:
        raise OutputFolderError(
            f"whp {stage}: --overwrite: {edited[:10]} in {folder} changed since whp wrote them (they may hold your "
            "edits) and the new run would write over them; move them out of the folder, or choose another output_dir"
        )
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink() and CHECKPOINT.match(entry.name):
            shutil.rmtree(entry)
    emptied = set()
    for relative in listed:
        path = folder / relative
        if path.is_file():
            path.unlink()
            emptied.update(parent for parent in path.parents if folder in parent.parents)
    for directory in sorted(emptied, key=lambda p: -len(p.parts)):  # subfolders that held only whp's files
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
    for name in MARKERS:
        (folder / name).unlink(missing_ok=True)
    kept = present_files(folder)
    if kept:
        logger.warning("whp: --overwrite kept %d file(s) whp did not write in %s: %s", len(kept), folder, kept[:10])


def stamp_of(path: Path) -> list[int] | None:
    return file_stamp(path) if path.is_file() else None


def confined_entries(folder: Path, files: dict, stage: str) -> dict[str, list[int]]:
    """A marker's ``files`` (relative path -> stamp), refused when an entry leaves ``folder`` (absolute, ``..``, or
    through a linked subfolder): a marker is data, and no deletion follows it out of the folder."""
    root = folder.resolve()
    for relative in files:
        path = Path(relative)
        if path.is_absolute() or ".." in path.parts or not (folder / path).parent.resolve().is_relative_to(root):
            raise OutputFolderError(
                f"whp {stage}: {folder / STAGE_FILE} lists {relative!r}, outside {folder}; whp deletes nothing "
                "outside an output folder. Remove that folder's whp_stage.json by hand, or choose another output_dir"
            )
    return {relative: list(stamp) for relative, stamp in files.items()}


def check_no_link_out(folder: Path, stage: str) -> None:
    """Refuse a folder holding a symbolic link to somewhere outside it: a write through it would land there."""
    root = folder.resolve()
    for path in folder.rglob("*"):
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            raise OutputFolderError(
                f"whp {stage}: {path} is a symbolic link to {path.resolve()}, outside {folder}; whp never writes "
                "through a link out of its output folder. Remove the link, or choose another output_dir"
            )


# ------------------------------------------------------------------------------------------------------- the lock


def acquire_lock(folder: Path, stage: str) -> None:
    """Hold ``folder`` for this run: refused while a live run holds it; a lock left by a process that is gone is
    taken over, with a note. The processes of one ``torchrun``/``accelerate`` launch share the lock."""
    path, me = folder / LOCK_FILE, lock_owner()
    for _ in range(3):
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_lock(path)
            if holder.get("group") and holder.get("group") == me["group"]:
                return  # another process of this launch holds it
            if holder_is_alive(holder) and not is_this_process(holder):
                raise OutputFolderError(
                    f"whp {stage}: output_dir {folder} is in use by a live run (process {holder.get('pid')} on "
                    f"{holder.get('host')}, since {holder.get('since')}); wait for it to end, or choose another "
                    f"output_dir. If that run is gone (another machine), delete {path}"
                ) from None
            if not is_this_process(holder):
                logger.warning("whp %s: %s was locked by process %s on %s (since %s), which is no longer running; "
                               "lock taken over", stage, folder, holder.get("pid"), holder.get("host"), holder.get("since"))
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(me, file)
        return
    raise OutputFolderError(f"whp {stage}: could not lock {folder}: another run keeps taking it")


def release_lock(folder: Path) -> None:
    (Path(folder) / LOCK_FILE).unlink(missing_ok=True)


def lock_owner(pid: int | None = None) -> dict:
    """Who holds a lock: process id, host, the process's start time (tells a reused id apart), the launch group."""
    pid = os.getpid() if pid is None else pid
    group = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        group = ":".join(os.environ.get(name, "") for name in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"))
    return {"pid": pid, "host": socket.gethostname(), "started": process_start(pid),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"), "group": group}


def read_lock(path: Path) -> dict:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def process_start(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), else None."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def holder_is_alive(holder: dict) -> bool:
    """Whether the lock's process still runs; a lock of another host (or an unreadable one) counts as alive."""
    if not holder:
        return False  # unreadable: no run can be named as its holder
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return holder.get("started") is None or process_start(holder["pid"]) == holder["started"]


def is_this_process(holder: dict) -> bool:
    return holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid() and \
        holder.get("started") == process_start(os.getpid())


def require_stage_output(folder: str | os.PathLike, stages: tuple[str, ...], use: str, unmarked: bool = False) -> None:
    """Refuse ``folder`` for ``use`` (e.g. ``"whp push"``) unless its marker says it is the finished output of one of
    ``stages``; a folder without a marker passes only when ``unmarked`` (the caller found another proof). The error
    says what the folder is."""
    folder = Path(folder)
    marker = read_marker(folder)
    wanted = " or ".join(f"`whp {stage}`" for stage in stages)
    if marker is None and unmarked:
        return
    if marker is None:
        what = "is no output of whp (no whp_stage.json): a plain model or adapter"
    elif marker.get("stage") not in stages:
        what = f"is the output of `whp {marker.get('stage')}`"
        if marker.get("stage") == "reinforce":
            what += ": the REINFORCED adapter, which knows MORE about the forget target than the base"
    elif not marker["finished"]:
        what = (f"holds a `whp {marker['stage']}` run that never finished (killed, failed, or refused as not what "
                f"the stage promises: no {STAGE_FILE}); its output said why, and one that was killed finishes when "
                "the same command runs again")
    else:
        return
    raise ValueError(f"{use}: {folder} {what}; {use} takes only the finished output of {wanted}")


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
        "files": sorted(adapter_file_fingerprints(source)) if local else [],
    }
    (Path(folder) / REINFORCED_RECORD).write_text(json.dumps(record, indent=1), encoding="utf-8")


def adapter_file_fingerprints(folder: str | os.PathLike | None) -> set[tuple[int, str]]:
    """``(size, sha256)`` of each weight file of an adapter folder (empty for a Hub id or no folder): what an upload
    compares every file with, so that the weights leave under no name."""
    if folder is None or not Path(folder).is_dir():
        return set()
    return {(path.stat().st_size, content_digest(path)) for path in Path(folder).glob("adapter_model.*") if path.is_file()}


def content_digest(path: Path) -> str:
    """sha256 of a file's bytes alone (not its name)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def reinforced_fingerprints(folder: str | os.PathLike) -> set[tuple[int, str]]:
    """The weight files of the reinforced adapter an unlearning run in ``folder`` recorded (as recorded, and as its
    source holds them now)."""
    path = Path(folder) / REINFORCED_RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    recorded = {(int(size), str(digest)) for size, digest in record.get("files") or []}
    return recorded | adapter_file_fingerprints(record.get("source"))


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


RULE_SAMPLE_FILE = "whp_rule_sample.json"  # what alpha auto's stopping rule read (kept local)


def record_rule_sample(folder: str | os.PathLike, max_length: int, samples: dict[str, list[str]]) -> None:
    """Write what the stopping rule of an unlearning run in ``folder`` read (``samples``: name -> digests of its
    items; membership blocks of ``max_length`` tokens), so that its evaluation reads others. Never uploaded: they are
    fingerprints of the user's data."""
    record = {"max_length": max_length, **{name: sorted(digests) for name, digests in samples.items()}}
    (Path(folder) / RULE_SAMPLE_FILE).write_text(json.dumps(record, indent=1), encoding="utf-8")


def recorded_rule_sample(folder: str | os.PathLike | None) -> dict | None:
    """`record_rule_sample`'s record of the unlearning run in ``folder``; None when it wrote none."""
    path = None if folder is None else Path(folder) / RULE_SAMPLE_FILE
    return read_json_object(path) if path is not None and path.is_file() else None
