"""The public names: `from whp_trainer import ...` works for each, lazily, and the API page lists them all."""

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import whp_trainer

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", whp_trainer.__all__)
def test_every_exported_name_resolves_to_the_object_its_module_defines(name):
    module = importlib.import_module(f"whp_trainer.{whp_trainer._MODULE_OF[name]}")
    value = getattr(whp_trainer, name)
    assert value is getattr(module, name) and value.__module__.startswith("whp_trainer.")
    assert name in dir(whp_trainer)


def test_an_unknown_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Unlearner'"):
        whp_trainer.Unlearner  # noqa: B018


def test_importing_the_package_loads_neither_torch_nor_transformers():
    code = "import sys, whp_trainer; print(sorted({'torch', 'transformers', 'whp_trainer.trainer'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_the_type_checking_imports_name_the_same_exports():
    """Editors and type checkers read the TYPE_CHECKING block; the lazy look-up reads _import_structure."""
    tree = ast.parse((ROOT / "whp_trainer" / "__init__.py").read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    imported = {(node.module, alias.name) for node in block.body for alias in node.names}
    assert imported == {(module, name) for module, names in whp_trainer._import_structure.items() for name in names}


def test_the_api_page_lists_every_exported_name():
    page = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert [name for name in whp_trainer.__all__ if f"[`{name}`][" not in page] == []
    for config in ("whp_trainer.config.UnlearnConfig", "whp_trainer.reinforce.ReinforceConfig"):
        assert f"<!-- whp-fields {config} -->" in page


def test_the_field_tables_list_every_field_a_config_adds_with_its_help():
    spec = importlib.util.spec_from_file_location("config_fields", ROOT / "docs" / "hooks" / "config_fields.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    from dataclasses import fields

    from transformers import HfArgumentParser, TrainingArguments

    from whp_trainer import UnlearnConfig

    table = hook.fields_table("whp_trainer.config.UnlearnConfig")
    inherited = {field.name for field in fields(TrainingArguments)}
    for field in fields(UnlearnConfig):
        if field.name not in inherited:
            assert f"| `{field.name}` |" in table and field.metadata["help"] in table
    assert "| `output_dir` | `str` | `'whp-unlearned'` | (default changed)" in table
    assert "| `seed` |" not in table  # an inherited field with the library's default is not repeated
    HfArgumentParser([UnlearnConfig])  # replaces the fields' string annotations by types, in place
    assert hook.fields_table("whp_trainer.config.UnlearnConfig") == table


def test_every_data_file_the_package_reads_ships_in_its_wheel():
    """An installed (not editable) package holds only what `package-data` names: a data file it misses is read in a
    checkout and missing after `pip install whp-trainer`."""
    import fnmatch
    import tomllib

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["whp_trainer"]
    package = ROOT / "whp_trainer"
    data = [path.relative_to(package).as_posix() for path in package.rglob("*")
            if path.is_file() and path.suffix not in (".py", ".pyc")]
    assert "evaluation/general_text/news.txt" in data
    assert [path for path in data if not any(fnmatch.fnmatch(path, glob) for glob in globs)] == []
