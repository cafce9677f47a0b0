"""The package's layers import one way, and the round engine imports only numpy.

Every import in ``src/tdxfl`` is parsed, function-level ones included. A part may import only the
parts listed for it below (its layer and those beneath); anything else -- an upward import or a
cycle -- fails with the file and line. ``tdxfl/__init__.py`` re-exports the public API and is
exempt.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import tdxfl

SRC = Path(tdxfl.__file__).parent

_BASE = {"errors", "files"}
_CORE = _BASE | {"engine"}
_TRUST = _BASE | {"attestation"}
_LOWER = _CORE | _TRUST | {"store", "ml", "transport", "server", "client", "keybroker"}

#: what each part of tdxfl may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "files": {"errors"},
    "engine": {"errors"},
    "privacy": _CORE,
    "attestation": _BASE,
    "store": _CORE,
    "ml": _CORE,
    "transport": _CORE | _TRUST,
    "server": _CORE | _TRUST | {"transport"},
    "client": _CORE | _TRUST | {"transport"},
    "keybroker": _CORE | _TRUST | {"transport", "store"},
    "config": _CORE | _TRUST | {"ml", "transport", "privacy"},
    "wiring": _LOWER | {"config", "privacy"},
    "cli": _LOWER | {"config", "wiring"},
    "__main__": {"cli"},
}
#: third-party packages the engine may use: it is numpy-only by design
ENGINE_THIRD_PARTY = {"numpy", "ml_dtypes"}


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "tdxfl" and len(parts) > 1 else None


def _imports(path: Path) -> list[tuple[str, int]]:
    """(absolute module, line) for every import in ``path``."""
    rel = path.relative_to(SRC.parent).with_suffix("").parts
    package = list(rel[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            out.append((module, node.lineno))
            if not node.module:  # from . import x
                out += [(f"{module}.{a.name}", node.lineno) for a in node.names]
    return out


def _sources() -> list[Path]:
    return [p for p in sorted(SRC.rglob("*.py")) if "_pb2" not in p.name and p != SRC / "__init__.py"]


def test_every_part_is_in_the_layer_table() -> None:
    parts = {p.relative_to(SRC).parts[0].removesuffix(".py") for p in _sources()}
    assert parts - set(ALLOWED) == set(), "add new parts of tdxfl to ALLOWED"


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_go_only_downward(path: Path) -> None:
    me = path.relative_to(SRC).parts[0].removesuffix(".py")
    bad = [
        f"{path.relative_to(SRC.parent)}:{line} imports {module}"
        for module, line in _imports(path)
        if (part := _part(module)) is not None and part != me and part not in ALLOWED[me]
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", sorted((SRC / "engine").rglob("*.py")), ids=lambda p: p.name)
def test_the_engine_imports_only_numpy(path: Path) -> None:
    bad = [
        f"{path.name}:{line} imports {module}"
        for module, line in _imports(path)
        if not module.startswith("tdxfl.")
        and module.split(".")[0] not in sys.stdlib_module_names | ENGINE_THIRD_PARTY | {"__future__"}
    ]
    assert not bad, "\n".join(bad)


def test_the_layer_table_has_no_cycle() -> None:
    """The table itself is acyclic, so code that obeys it cannot form an import cycle."""
    state: dict[str, int] = {}

    def visit(part: str, path: list[str]) -> None:
        if state.get(part) == 1:
            pytest.fail(f"cycle in ALLOWED: {' -> '.join([*path, part])}")
        if state.get(part) == 2:
            return
        state[part] = 1
        for dep in ALLOWED[part]:
            visit(dep, [*path, part])
        state[part] = 2

    for part in ALLOWED:
        visit(part, [])
