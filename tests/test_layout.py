"""relay's layers import downwards only: edge -> backends -> core -> wire (and the leaves).

Read from the source with ``ast`` (every import, including those inside functions and under
``TYPE_CHECKING``), so a module that reaches up a layer fails here, naming the import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

RELAY = Path(__file__).resolve().parent.parent / "relay"
#: modules any layer may import
LEAVES = {"relay", "relay.errors", "relay.names", "relay.limits", "relay.settings"}
#: layer -> the layers it may import (besides itself and the leaves)
BELOW = {
    "wire": set(),
    "core": {"wire"},
    "backends": {"core", "wire"},
    "edge": {"backends", "core", "wire", "cli"},
}


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ("wire", "core", "backends", "cli", "loadtest"):
        return parts[1]
    return "edge"


def imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            base = node.module
            if base == "relay":  # from relay import x: the module relay.x (or a name of relay)
                found += [(node.lineno, f"relay.{a.name}") for a in node.names]
            elif base.startswith("relay."):
                found.append((node.lineno, base))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("relay.")]
    return found


def modules(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (RELAY / folder).glob("*.py"))


@pytest.mark.parametrize("folder", ["wire", "core", "backends"])
def test_each_layer_imports_only_below_itself(folder: str) -> None:
    wrong = []
    files = modules(folder)
    assert files, f"relay/{folder}/ holds no module"
    for path in files:
        for line, target in imports(path):
            if target in LEAVES or target == "relay.__version__":
                continue
            if layer(target) not in {folder, *BELOW[folder]}:
                wrong.append(f"relay/{folder}/{path.name}:{line} imports {target}")
    assert not wrong, "imports pointing up a layer:\n" + "\n".join(wrong)


def test_the_leaves_import_only_leaves() -> None:
    wrong = []
    for name in ("errors", "names", "limits", "settings"):
        path = RELAY / f"{name}.py"
        wrong += [
            f"relay/{name}.py:{line} imports {target}"
            for line, target in imports(path)
            if target not in LEAVES
        ]
    assert not wrong, "a leaf importing a layer:\n" + "\n".join(wrong)


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from relay.core import service\nfrom relay import handlers\n")
    targets = [t for _, t in imports(bad)]
    assert targets == ["relay.core", "relay.handlers"]
    assert layer("relay.core") == "core" and layer("relay.handlers") == "edge"
