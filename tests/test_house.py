"""The house: the package's rooms, the imports each may make (its `May import:` line), module sizes and docstrings.

Every import in the package, lazy ones inside functions included, is read from the source with `ast`; an import
of another room that the importing room's docstring does not allow fails here, naming the file and line.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "ichbench"
#: the only modules allowed directly under src/ichbench (everything else lives in a room)
TOP_MODULES = {"__init__", "__main__", "config", "errors"}
MAX_LINES = 400


def _room_of(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _rooms() -> dict[str, Path]:
    """room name -> the file whose docstring states its imports (a subpackage's __init__ or a top module)."""
    rooms = {p.parent.name: p for p in PKG.glob("*/__init__.py")}
    rooms.update({p.stem: p for p in PKG.glob("*.py")})
    return rooms


def _allowed(doc_file: Path, rooms) -> set[str]:
    doc = ast.get_docstring(ast.parse(doc_file.read_text())) or ""
    m = re.search(r"^May import: (.+?)\.?$", doc, re.M)
    assert m, f"{doc_file.relative_to(PKG.parent)}: the docstring has no 'May import: ...' line"
    text = m.group(1).strip()
    if text == "nothing":
        return set()
    if text == "every room":
        return set(rooms)
    names = {n.strip() for n in text.split(",")}
    unknown = names - set(rooms)
    assert not unknown, f"{doc_file}: 'May import' names unknown rooms {sorted(unknown)}"
    return names


def _imports(path: Path):
    """(line, absolute ichbench module) for every import of ichbench in a file, at any depth."""
    rel = path.relative_to(PKG.parent).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "ichbench":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "ichbench":
                continue
            if mod == "ichbench" or node.module is None:   # `from . import a, b`: the names are modules
                for alias in node.names:
                    yield node.lineno, f"{mod}.{alias.name}"
            else:
                yield node.lineno, mod


def _target_room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_module_lives_in_a_room():
    flat = sorted(p.stem for p in PKG.glob("*.py") if p.stem not in TOP_MODULES)
    assert not flat, f"modules directly under src/ichbench (put them in a room): {flat}"


def test_imports_point_one_way():
    rooms = _rooms()
    allowed = {r: _allowed(f, rooms) for r, f in rooms.items()}
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        room = _room_of(path)
        for line, module in _imports(path):
            target = _target_room(module)
            if target is None or target == room:
                continue
            if target not in allowed[room]:
                bad.append(f"{path.relative_to(PKG.parent)}:{line} imports {module} ({room} may import: "
                           f"{', '.join(sorted(allowed[room])) or 'nothing'})")
    assert not bad, "imports against the house's contract:\n" + "\n".join(bad)


def test_the_allowed_imports_have_no_circle():
    rooms = _rooms()
    allowed = {r: _allowed(f, rooms) - {r} for r, f in rooms.items() if r not in ("cli", "__main__")}
    state: dict[str, int] = {}

    def visit(r, trail):
        if state.get(r) == 1:
            raise AssertionError("circle in the allowed imports: " + " -> ".join(trail + [r]))
        if state.get(r) == 2:
            return
        state[r] = 1
        for t in sorted(allowed.get(r, ())):
            visit(t, trail + [r])
        state[r] = 2

    for r in sorted(allowed):
        visit(r, [])


@pytest.mark.parametrize("room, forbidden", [
    ("inputs", {"evaluation", "training", "methods", "cli", "cohort", "datasets"}),
    ("methods", {"cli", "training", "evaluation", "config", "bench"}),
    ("nets", {"methods", "training", "anomalies", "inputs"}),
    ("evaluation", {"training", "methods", "cli", "bench"}),
])
def test_the_rules_the_issue_names(room, forbidden):
    """A reader never imports evaluation; a method never imports the command line (spelled out, not only derived)."""
    rooms = _rooms()
    assert not (_allowed(rooms[room], rooms) & forbidden)


def test_the_contract_test_sees_a_forbidden_import(tmp_path):
    """The import reader resolves relative imports, lazy ones included, to their room."""
    fake = PKG / "inputs" / "dicomio.py"
    tree = list(_imports(fake))
    assert any(m.startswith("ichbench.inputs.") for _, m in tree)
    probe = PKG / "inputs" / "_probe_for_test.py"
    try:
        probe.write_text('"""probe."""\n\n\ndef f():\n    from ..evaluation import stats\n    from .. import training\n')
        found = [m for _, m in _imports(probe)]
        assert found == ["ichbench.evaluation", "ichbench.training"]
        assert {_target_room(m) for m in found} == {"evaluation", "training"}
    finally:
        probe.unlink()


def test_modules_are_short_and_say_what_they_are_for():
    long, undocumented = [], []
    for path in sorted(PKG.rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > MAX_LINES:
            long.append(f"{path.relative_to(PKG.parent)} ({text.count(chr(10))} lines)")
        if not ast.get_docstring(ast.parse(text)) and text.strip():
            undocumented.append(str(path.relative_to(PKG.parent)))
    assert not long, f"modules over {MAX_LINES} lines (split them): {long}"
    assert not undocumented, f"modules without a docstring saying what they are for: {undocumented}"


def test_paths_from_the_package_find_the_project():
    """Modules that locate the project from their own file still find it after moving into a room."""
    from ichbench import config
    from ichbench.training import digest, runinfo

    assert (config.ROOT / "pyproject.toml").is_file()
    assert (runinfo.PROJECT / "pyproject.toml").is_file()
    assert config.SCHEMA.is_file()
    assert digest.TRAIN_LOOP.is_file()


def test_a_rows_code_digest_follows_its_imports_all_the_way_down():
    """A helper two imports away from a row (the Poisson solver in device_ops: NSA -> selfsup -> device ->
    device_ops) is part of the row's digest, so editing it reruns the row; a row that never imports it is not."""
    from ichbench.methods import get_method
    from ichbench.training.digest import _source_modules

    names = lambda row: {m.__name__ for m in _source_modules(get_method(row))}   # noqa: E731
    assert {"ichbench.anomalies.device", "ichbench.anomalies.device_ops", "ichbench.methods.selfsup"} <= names("NSA")
    assert names("AE") == {"ichbench.methods.ae", "ichbench.methods.base", "ichbench.nets.autoencoder"}
