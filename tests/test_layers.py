"""Data flows one way: no module of whp_trainer imports a module of a higher layer (docs/architecture.md).

Every import is read from the source with `ast`, those inside functions included (a lazy import is still a
dependency). A module may import its own layer and the layers below it.
"""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "whp_trainer"

# Low to high; the names are top-level modules or sub-packages of whp_trainer. Keep docs/architecture.md in step.
LAYERS = [
    ("padding and the method's mathematics", {"targets", "batching"}),
    ("anchors", {"dictionary", "anchors"}),
    ("batches and data", {"collator", "cache", "data"}),
    ("models", {"models", "loading", "chat", "toy"}),
    ("settings and records", {"config", "runs", "record", "console", "verbosity"}),
    ("evaluation", {"evaluation"}),
    ("model card and publishing", {"hub"}),
    ("trainers and discovery", {"trainer", "reinforce", "discover"}),
    ("command line and demo", {"cli", "pipeline", "auto", "arguments", "demo"}),
]
LAYER_OF = {unit: index for index, (_, units) in enumerate(LAYERS) for unit in units}

# (importing module, imported unit) → the names it imports, allowed for now. Each entry must still be needed.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}


def module_name(path: Path, package_root: Path = PACKAGE) -> str:
    parts = path.relative_to(package_root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, package_root: Path = PACKAGE) -> set[str]:
    """Absolute names of the whp_trainer modules (or packages) that the file at ``path`` imports, anywhere in it."""
    name = module_name(path, package_root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            # `from whp_trainer import hub` imports a module: count the names too
            found.update([base, *(f"{base}.{alias.name}" for alias in node.names)])
    return {module for module in found if module.split(".")[0] == "whp_trainer"}


def unit(module: str) -> str | None:
    """The layered unit of a module: its top-level name under whp_trainer (None for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


MODULES = sorted(PACKAGE.rglob("*.py"))
LAYERED = [path for path in MODULES if unit(module_name(path))]  # the package's lazy exports stand above all


def test_every_module_has_a_layer():
    unplaced = {unit(module_name(path)) for path in LAYERED} - set(LAYER_OF)
    assert not unplaced, f"place {sorted(unplaced)} in LAYERS (tests/test_layers.py) and in docs/architecture.md"


@pytest.mark.parametrize("path", LAYERED, ids=module_name)
def test_no_module_imports_a_higher_layer(path):
    importer = module_name(path)
    own = LAYER_OF[unit(importer)]
    upward = sorted(
        f"{module} (layer {LAYER_OF[unit(module)]}: {LAYERS[LAYER_OF[unit(module)]][0]})"
        for module in imported_modules(path)
        if unit(module) in LAYER_OF and LAYER_OF[unit(module)] > own
        and (importer, unit(module)) not in KNOWN_EXCEPTIONS
    )
    assert not upward, f"{importer} (layer {own}: {LAYERS[own][0]}) imports higher layers: {upward}"


def test_known_exceptions_are_still_needed():
    imports = {module_name(path): {unit(module) for module in imported_modules(path)} for path in MODULES}
    stale = [pair for pair in KNOWN_EXCEPTIONS if pair[1] not in imports.get(pair[0], set())]
    assert not stale, f"{stale} no longer import upwards: remove them from KNOWN_EXCEPTIONS"


def test_an_upward_import_is_seen_even_inside_a_function(tmp_path):
    fake = tmp_path / "whp_trainer"
    (fake / "evaluation").mkdir(parents=True)
    (fake / "evaluation" / "metric.py").write_text("def f():\n    from ..hub import push_to_hub\n")
    (fake / "collator.py").write_text("from . import trainer\nfrom .anchors import AnchorDictionary\n")
    assert "whp_trainer.hub" in imported_modules(fake / "evaluation" / "metric.py", fake)
    assert {unit(m) for m in imported_modules(fake / "collator.py", fake)} == {None, "trainer", "anchors"}


def test_the_architecture_page_shows_the_same_layers():
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d+) \| ([^|]+) \|", page, re.MULTILINE)
    documented = [(int(layer), set(re.findall(r"`(\w+)`", modules))) for layer, modules in rows]
    assert documented == [(index, units) for index, (_, units) in enumerate(LAYERS)]
