"""The ``whp`` command: one sub-command per stage, ``whp run CONFIG.yaml`` to chain them, ``whp demo``.

One registry, ``COMMANDS``, names every command with its help line, the dataclasses of its options and the function
it runs; the usage text, the parsers and the dispatch all read it. Every stage's options come from those dataclasses
(``DataArguments``, TRL's ``ModelConfig`` with ``--gguf_file``, the stage's config) parsed by TRL's parser:
``--config FILE.yaml`` sets
them, flags override the file, ``--help`` lists them with their help.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import os
import re
import sys
import traceback
import types
import typing
from enum import Enum
from pathlib import Path

import yaml


@dataclasses.dataclass(frozen=True)
class Command:
    """One ``whp`` command: its line in ``whp --help``, the dataclasses its options fill, and the function it runs.

    ``options`` and ``function`` are ``"module:name"`` paths, imported only when the command is parsed or run, so
    that ``whp --help`` loads no library. The function takes the parsed dataclasses in order, and ``overwrite=``
    when the command has ``--overwrite`` (``overwrite`` is that flag's help). A stage with an ``output`` writes its
    markers (`whp_trainer.runs`) into that subfolder of ``whp run``'s ``output_dir``.
    """

    help: str
    function: str
    options: tuple[str, ...] = ()
    overwrite: str | None = None
    output: str | None = None


DATA, MODEL = "whp_trainer.arguments:DataArguments", "whp_trainer.loading:ModelArguments"
REDO = "Delete what an earlier run of this stage wrote to output_dir (and only that), and start over."
COMMANDS = {
    "reinforce": Command(
        "Stage 1: train the reinforced LoRA adapter on the forget target.", "whp_trainer.pipeline:reinforce",
        (DATA, MODEL, "whp_trainer.reinforce:ReinforceConfig"), REDO, output="reinforced",
    ),
    "anchors": Command(
        "Propose anchor candidates (statistics and/or an LLM) into a file for review.", "whp_trainer.pipeline:discover",
        (DATA, MODEL, "whp_trainer.arguments:DiscoverArguments"), "Replace an existing candidates file.",
    ),
    "unlearn": Command(
        "Stages 2-4: train the unlearning adapter towards the generic targets.", "whp_trainer.pipeline:unlearn",
        (DATA, MODEL, "whp_trainer.config:UnlearnConfig"), REDO, output="unlearned",
    ),
    "evaluate": Command(
        "Familiarity, memorization, retained ability and robustness: base vs reinforced vs unlearned.",
        "whp_trainer.pipeline:evaluate", (DATA, MODEL, "whp_trainer.evaluation:EvaluateConfig"), REDO,
        output="evaluation",
    ),
    "export": Command(
        "Merge the unlearning adapter into its full-precision base (loads without this package).",
        "whp_trainer.pipeline:export", ("whp_trainer.arguments:PublishArguments",),
        "Replace an earlier export in a non-empty merged_dir.",
    ),
    "push": Command(
        "Upload an adapter or merged folder, with its model card, to the Hugging Face Hub.",
        "whp_trainer.pipeline:push", ("whp_trainer.arguments:PublishArguments",),
    ),
    "run": Command(
        "Run the stages of a sectioned YAML config in order, skipping those whose output is current.",
        "whp_trainer.cli:run_config",
    ),
    "demo": Command(
        "The CPU demo: a small invented saga is learnt, then forgotten, in a few minutes.",
        "whp_trainer.demo.run:run_demo", ("whp_trainer.arguments:DemoArguments",),
        "Redo stages whose outputs were made otherwise.",
    ),
}
AUTO_REFERENCES = ("holdout_data", "oracle_model", "neighbour_knowledge", "forget_knowledge")  # alpha auto reads too
NUMBER_OR_WORD = {"alpha": "auto"}  # options typed `float | str` (a number or this word): TrlParser reads numbers only
RUN_STAGES = ("reinforce", "anchors", "unlearn", "evaluate", "push")
TOGETHER = ("reinforce", "unlearn")  # the stages a launcher's processes run together (they train); the others in one
USAGE = "usage: whp COMMAND [--config FILE.yaml] [--option value ...]   (whp COMMAND --help)\n\ncommands:\n" + "\n".join(
    f"  {name:<10} {command.help}" for name, command in COMMANDS.items()
)


RUN_HELP = """usage: whp run CONFIG.yaml [--overwrite] [--SECTION.OPTION value ...]

Run the stage sections of CONFIG.yaml in order: reinforce, anchors, unlearn, evaluate, push. Shared sections:
output_dir (stage outputs go to its reinforced/, unlearned/, evaluation/), model (ModelConfig options) and data
(DataArguments options); each stage section takes that stage's options (whp STAGE --help). A stage whose output
is current is skipped; an interrupted one resumes from its last complete checkpoint. With `alpha: auto` in the
unlearn section, the unlearn stage chooses α (teacher sweep, stronger reinforcement if needed) and stops the
student at the targets; it reads holdout_data, oracle_model, neighbour_knowledge and forget_knowledge from the
evaluate section unless given its own. Under a launcher's processes (torchrun, accelerate launch) it runs the
stages that train together (reinforce, unlearn) up to the first that runs in one process, and says so: `whp run
CONFIG.yaml` without the launcher then runs the rest (the finished stages are skipped).

options:
  --overwrite           redo stages whose output_dir holds a run with other settings (deleting only what that
                        run wrote)
  --SECTION.OPTION V    override one option of the file, e.g. --unlearn.alpha 3"""


class CliError(Exception):
    """A user error, printed as one line before anything is loaded."""


def imported(path: str):
    """The object a ``"module:name"`` path names."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def command_of(name: str) -> Command:
    if name not in COMMANDS or not COMMANDS[name].options:
        raise CliError(f"unknown command {name!r}\n{USAGE}")
    return COMMANDS[name]


def stage_dataclasses(command: str) -> tuple:
    """The dataclasses whose fields are the options of ``whp COMMAND``, in the order the function takes them."""
    return tuple(imported(path) for path in command_of(command).options)


def parser_for(command: str):
    """The stage's parser: its own options first in ``--help``, errors as one line (no usage dump)."""
    from transformers.hf_argparser import string_to_bool
    from trl import TrlParser

    class StageParser(TrlParser):
        def error(self, message):
            raise CliError(f"{self.prog}: {message} (see {self.prog} --help)")

    dataclass_types = stage_dataclasses(command)
    parser = StageParser(dataclass_types, prog=f"whp {command}", description=COMMANDS[command].help)
    parser.usage = f"whp {command} [--config FILE.yaml] [--OPTION VALUE ...]"
    parser.add_argument("--config", metavar="FILE.yaml", help="Read options from a YAML file; flags override it.")
    if COMMANDS[command].overwrite:  # a boolean flag as the dataclasses' are: --overwrite, or --overwrite true/false
        parser.add_argument("--overwrite", type=string_to_bool, nargs="?", const=True, default=False,
                            help=COMMANDS[command].overwrite)
    for action in parser._actions:  # a number or a word (alpha: auto): read as text, the dataclass checks it
        if action.dest in NUMBER_OR_WORD:
            action.type = str
    group_help(parser, dataclass_types)
    return parser


def group_help(parser, dataclass_types: tuple) -> None:
    """Order ``--help`` as a user reads it: general options, the stage's own, then data, model, and the fields
    inherited from ``TrainingArguments``/``SFTConfig``."""
    stage = dataclass_types[-1]
    own = {f.name for f in dataclasses.fields(stage) if f.name in vars(stage).get("__annotations__", {})}
    titles = {
        "own": f"{stage.__name__} options",
        **{cls.__name__: f"{cls.__name__} options" for cls in dataclass_types[:-1]},
        "inherited": f"inherited {parent.__name__} options" if (parent := dataclass_parent(stage)) else None,
    }
    owner = {}
    for cls in dataclass_types:
        for f in dataclasses.fields(cls):
            owner.setdefault(f.name, "own" if cls is stage and f.name in own else "inherited" if cls is stage else cls.__name__)
    groups = {key: parser.add_argument_group(title) for key, title in titles.items() if title}
    general = parser._optionals
    for action in list(general._group_actions):
        key = owner.get(action.dest)
        if key in groups:
            general._group_actions.remove(action)
            groups[key]._group_actions.append(action)
    order = [general, groups["own"], *(groups[cls.__name__] for cls in dataclass_types[:-1])]
    parser._action_groups = list(dict.fromkeys([*order, *parser._action_groups]))


def dataclass_parent(cls: type) -> type | None:
    """The library dataclass ``cls`` extends (``TrainingArguments``, ``SFTConfig``), if any."""
    return next((base for base in cls.__mro__[1:]
                 if dataclasses.is_dataclass(base) and not base.__module__.startswith("whp_trainer")), None)


def parse_stage(command: str, argv: list[str], defaults: dict | None = None, source: str = "flags"):
    """Parse one stage's options: ``defaults`` (a config file's values) first, then ``argv`` flags."""
    parser = parser_for(command)
    if "--config" in argv:
        position = argv.index("--config")
        if position + 1 >= len(argv):
            raise CliError(f"whp {command}: --config needs a file")
        source = argv[position + 1]
        defaults = {**read_yaml(source), **(defaults or {})}
        argv = argv[:position] + argv[position + 2 :]
    check_values(stage_dataclasses(command), defaults or {}, source, command)
    unknown = parser.set_defaults_with_config(**(defaults or {}))
    if unknown:
        keys = sorted({item[2:] for item in unknown[::2]})
        raise CliError(f"{source}: unknown key(s) for whp {command}: {', '.join(keys)} (see whp {command} --help)")
    try:
        *parsed, extras, rest = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except (ValueError, TypeError) as error:  # a dataclass's __post_init__ rejected a value
        raise CliError(f"whp {command}: {where_set(error, defaults or {}, argv, source)}{error}") from error
    if rest:
        raise CliError(f"whp {command}: unknown option(s) {' '.join(rest)} (see whp {command} --help)")
    return parsed, bool(getattr(extras, "overwrite", False))


def where_set(error: Exception, values: dict, argv: list[str], source: str) -> str:
    """``"FILE: "`` when the key a config check refused was set by the config file (not by a flag); else ``""``."""
    named = {key for key in values if re.search(rf"\b{re.escape(key)}\b", str(error))}
    return f"{source}: " if named and not any(f"--{key}" in argv for key in named) else ""


def chosen_from(value, choices) -> bool:
    """Whether ``value`` (or, for a list option, each of its items) is one of ``choices``."""
    return all(item in choices for item in value) if isinstance(value, list) else value in choices


def check_values(dataclass_types: tuple, values: dict, source: str, command: str) -> None:
    """Each config-file value has its field's type; the error names the file and the key."""
    hints = {}
    for cls in dataclass_types:
        try:
            hints.update(typing.get_type_hints(cls))
        except Exception:  # noqa: BLE001 - a field whose annotation cannot be resolved is left to the parser
            continue
    choices = {f.name: f.metadata["choices"] for cls in dataclass_types for f in dataclasses.fields(cls)
               if "choices" in f.metadata}
    for key, value in values.items():
        problem = type_problem(hints[key], value) if key in hints else None
        if key in NUMBER_OR_WORD and str(value).strip().lower() != NUMBER_OR_WORD[key]:
            problem = type_problem(float, value) and f"a number or {NUMBER_OR_WORD[key]!r}"
        if problem is None and key in choices and value is not None and not chosen_from(value, choices[key]):
            problem = f"one of {choices[key]}"
        if problem:
            raise CliError(f"{source}: {key}: expected {problem}, got {value!r} (whp {command})")


def type_problem(hint, value) -> str | None:
    """What ``value`` should have been for a field typed ``hint``; None when it fits."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        problems = [type_problem(option, value) for option in options if option is not type(None)]
        return None if any(problem is None for problem in problems) else " or ".join(dict.fromkeys(problems))
    origin = typing.get_origin(hint) or hint
    if origin in (list, tuple, set):
        (item, *_), kind = typing.get_args(hint) or (str,), "a list"
        if isinstance(value, str):
            return None
        if not isinstance(value, (list, tuple)):
            return kind
        bad = [type_problem(item, element) for element in value]
        return next((f"{kind} of {problem}s" for problem in bad if problem), None)
    if origin is dict:
        return None if isinstance(value, (dict, str)) else "a mapping"
    if origin is bool:
        return None if isinstance(value, bool) or str(value).lower() in ("true", "false", "yes", "no", "1", "0") else "true or false"
    if origin in (int, float):
        kind = "a whole number" if origin is int else "a number"
        if isinstance(value, bool):
            return kind
        try:
            number = float(value)
        except (TypeError, ValueError):
            return kind
        return kind if origin is int and not number.is_integer() else None
    if isinstance(origin, type) and issubclass(origin, Enum):
        choices = [member.value for member in origin]
        return None if value in choices or isinstance(value, origin) else f"one of {choices}"
    if origin is str:
        return None if isinstance(value, (str, int, float)) and not isinstance(value, bool) else "a string"
    return None


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (plain YAML keeps the last, silently)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def read_yaml(path: str) -> dict:
    if not Path(path).is_file():
        raise CliError(f"{path}: no such config file")
    try:
        config = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=UniqueKeyLoader) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise CliError(f"{path}: not valid YAML{where}: {getattr(error, 'problem', None) or error}") from error
    if not isinstance(config, dict):
        raise CliError(f"{path}: the config must be a YAML mapping of option: value")
    return config


def run_stage(command: str, argv: list[str], defaults: dict | None = None, source: str = "flags"):
    """Parse and run one stage; returns its output path."""
    parsed, overwrite = parse_stage(command, argv, defaults, source)
    extra = {"overwrite": overwrite} if COMMANDS[command].overwrite else {}
    return imported(COMMANDS[command].function)(*parsed, **extra)


def run_config(argv: list[str]) -> None:
    """``whp run CONFIG.yaml [--SECTION.OPTION value ...]``: the config's stage sections, in order."""
    if argv and argv[0] in ("-h", "--help"):
        print(RUN_HELP)
        return
    if not argv or argv[0].startswith("-"):
        raise CliError("usage: whp run CONFIG.yaml [--overwrite] [--SECTION.OPTION value ...] (see whp run --help)")
    path, overrides = argv[0], argv[1:]
    overwrite = "--overwrite" in overrides
    overrides = [item for item in overrides if item != "--overwrite"]
    config = apply_overrides(read_yaml(path), overrides, path)
    plans = plan_run(config, path)
    for command, values in plans:  # every stage's options are checked before the first one runs
        parse_stage(command, [], values, f"{path} [{command}]")
    launched, left = stages_run_together(plans), None
    if len(launched) < len(plans):
        left = (f"whp run: under {launched_processes()} processes the stages that train run together; "
                f"{', '.join(command for command, _ in plans[len(launched):])} run in one process: afterwards, "
                f"`whp run {path}` without the launcher runs them (the finished stages are skipped)")
        print(left, flush=True)
    for command, values in launched:
        check_reviewed(command, values, config, path)
        print(f"whp run: {command}", flush=True)
        extra = ["--overwrite"] if overwrite and COMMANDS[command].output else []  # marked outputs only
        run_stage(command, extra, values, f"{path} [{command}]")
    if left:
        print(left, flush=True)


def launched_processes() -> int:
    """How many processes a launcher (torchrun, accelerate launch) started for this command: its ``WORLD_SIZE``."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def stages_run_together(plans: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """Of a run's ``plans``, those a launcher's processes run: all in one process; under several, the stages up to
    the first that does not train (an evaluation, an upload, a dictionary: each process would do it again, into the
    same files)."""
    if launched_processes() == 1:
        return plans
    first_alone = next((index for index, (command, _) in enumerate(plans) if command not in TOGETHER), len(plans))
    return plans[:first_alone]


def check_one_process(command: str) -> None:
    """Refuse, before anything loads, a command that runs in one process under a launcher's several."""
    if command in COMMANDS and command not in (*TOGETHER, "run") and launched_processes() > 1:
        raise CliError(f"whp {command} runs in one process, and {launched_processes()} were launched (torchrun, "
                       f"accelerate launch): each would do it again, into the same files. Launch only "
                       f"{' and '.join(TOGETHER)} that way, and run `whp {command}` on its own")


def check_reviewed(command: str, values: dict, config: dict, path: str) -> None:
    """No stage of a run with an ``anchors`` section trains or evaluates on candidates nobody reviewed: before one
    reads a ``data.anchors`` that does not exist yet, the run stops and says where the candidates are."""
    if "anchors" not in config or command not in ("unlearn", "evaluate"):
        return
    dictionary = values.get("anchors")
    if dictionary and not Path(dictionary).exists():
        root = Path(config.get("output_dir") or "whp-run")
        candidates = (config["anchors"] or {}).get("output") or root / "anchors.candidates.yaml"
        raise CliError(
            f"{path}: data.anchors {dictionary} does not exist yet: review the candidates in {candidates} (keep, "
            f"translate or delete each entry), save the result as {dictionary}, and run again. Nothing trains on "
            "candidates nobody reviewed."
        )


def apply_overrides(config: dict, overrides: list[str], path: str) -> dict:
    """``--unlearn.alpha 3`` sets ``config["unlearn"]["alpha"] = 3`` (values read as YAML scalars)."""
    if len(overrides) % 2:
        raise CliError(f"whp run: options come in pairs --SECTION.OPTION value; got {' '.join(overrides)}")
    for flag, value in zip(overrides[::2], overrides[1::2]):
        section, _, key = flag.removeprefix("--").partition(".")
        if not flag.startswith("--") or not key:
            raise CliError(f"whp run: {flag}: expected --SECTION.OPTION (e.g. --unlearn.alpha 3)")
        config.setdefault(section, {})[key] = yaml.safe_load(value)
    return config


def plan_run(config: dict, path: str) -> list[tuple[str, dict]]:
    """The stages a run config asks for, each with its options: the shared ``model`` and ``data`` sections, the
    stage's own section, and output folders under the top-level ``output_dir``."""
    known = {"output_dir", "model", "data", *RUN_STAGES}
    unknown = sorted(set(config) - known)
    if unknown:
        raise CliError(f"{path}: unknown section(s) {', '.join(unknown)}; expected {', '.join(sorted(known))}")
    for section in ("model", "data", *RUN_STAGES):
        if not isinstance(config.get(section) or {}, dict):
            raise CliError(f"{path}: section {section!r} must be a mapping of option: value")
    root = Path(config.get("output_dir") or "whp-run")
    data = dict(config.get("data") or {})
    shared = {**(config.get("model") or {}), **data}
    outputs = {name: root / command.output for name, command in COMMANDS.items() if command.output}
    if "reinforce" in config:
        data.setdefault("reinforced_adapter", str(outputs["reinforce"]))
    if "unlearn" in config:
        data.setdefault("unlearned_adapter", str(outputs["unlearn"]))
    shared.update(data)
    auto = str((config.get("unlearn") or {}).get("alpha", "")).lower() == "auto"
    plans = []
    for stage in RUN_STAGES:
        if stage not in config:
            continue
        options = dict(config[stage] or {})
        if auto and stage == "unlearn":  # the sweep's references are the evaluation's, unless given here
            evaluation = config.get("evaluate") or {}
            options.update({key: evaluation[key] for key in AUTO_REFERENCES if key in evaluation and key not in options})
        if auto and stage == "evaluate" and "reinforced_adapter" not in (config.get("data") or {}):
            options.setdefault("reinforced_adapter", None)  # the one the unlearning run chose (it may be stronger)
        if stage == "evaluate" and "max_length" in (config.get("unlearn") or {}):
            options.setdefault("max_length", config["unlearn"]["max_length"])  # blocks as the unlearn stage cut them
        if stage in outputs:
            options.setdefault("output_dir", str(outputs[stage]))
        if stage in ("export", "push"):
            plans.append((stage, {"folder": str(outputs["unlearn"]), **options}))
        elif stage == "anchors":  # candidates go to their own file, never to the dictionary: the user reviews them
            candidates = options.pop("output", None) or str(root / "anchors.candidates.yaml")
            if data.get("anchors") and Path(data["anchors"]).exists() or Path(candidates).exists():
                continue  # the reviewed dictionary is there, or candidates await their review: discovery is done
            plans.append((stage, {**shared, "output": candidates, **options}))
        else:
            plans.append((stage, {**shared, **options}))
    return plans


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    from .verbosity import quiet_library_loggers, verbose

    if not verbose():
        quiet_library_loggers()  # before the console's imports: some libraries log as they are imported
    from .console import setup_output

    setup_output()
    command, rest = argv[0], argv[1:]
    try:
        check_one_process(command)
        if command in COMMANDS and not COMMANDS[command].options:  # `whp run CONFIG.yaml` reads its own arguments
            imported(COMMANDS[command].function)(rest)
        else:
            output = run_stage(command, rest)
            if output is not None:
                print(f"whp {command}: done -> {output}")
    except (CliError, ValueError, OSError) as error:  # OSError: missing files, refused folders, network
        print(f"whp: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        leave_process_group()


def leave_process_group() -> None:
    """Destroy this process's torch.distributed group, if a launcher (torchrun, accelerate) made one: left to the
    interpreter's exit, gloo's threads can outlive it and abort the process after its work is done.

    Trainers are freed first, while the group is still registered: those no longer reachable, and those only the
    frames of a failed stage hold. A DDP model's reducer that held the group's last reference would destroy it
    holding the GIL, joining gloo threads that may need the GIL to free a finished work's tensors: a deadlock
    (torch binds the reducer without releasing the GIL). Dropped here instead, the group is destroyed by its own
    binding, which releases the GIL."""
    dist = sys.modules.get("torch.distributed")  # not imported: no group (and no torch import for an early error)
    if dist is not None and dist.is_available() and dist.is_initialized():
        error = sys.exc_info()[1]  # an error on its way out: its tracebacks' frames hold the stage's locals
        while error is not None:
            traceback.clear_frames(error.__traceback__)
            error = error.__context__
        gc.collect()  # trainers live in reference cycles (their callbacks hold them)
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
