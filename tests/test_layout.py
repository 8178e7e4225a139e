"""The code shows its own design: stages are packages with a one-line purpose, and no module
reaches into another package's private names (``_``-prefixed modules or attributes)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "resdoctor"
STAGES = (
    "recording",
    "runfile",
    "fixes",
    "rules",
    "report",
    "cli",
    "app",
    "integrations",
    "attribution",
)


def _modules() -> list[tuple[str, Path]]:
    out = []
    for f in sorted(ROOT.rglob("*.py")):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out.append((".".join(parts), f))
    return out


def _package(module: str) -> str:
    """The stage a module belongs to (``resdoctor.rules._common`` -> ``rules``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _private(module: str) -> bool:
    return any(p.startswith("_") and p != "__init__" for p in module.split(".")[1:])


def _imports(module: str, tree: ast.AST) -> tuple[list[str], dict[str, str]]:
    """Imports of another package's private module or name; names bound to other packages."""
    mine = _package(module)
    found, imported = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("resdoctor"):
            target = node.module or ""
            pairs = [(f"{target}.{a.name}", a.asname or a.name, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            pairs = [
                (a.name, a.asname or a.name.split(".")[0], "")
                for a in node.names
                if a.name.startswith("resdoctor")
            ]
            target = ""
        else:
            continue
        for full, bound, name in pairs:
            if _package(target or full) == mine or _package(full) == mine:
                continue
            if _private(target or full) or (name.startswith("_") and name != "__version__"):
                found.append(f"{module}:{node.lineno} imports {full}")
            imported[bound] = full
    return found, imported


def _violations(module: str, source: str) -> list[str]:
    """Imports of another package's private module or name, and attribute access of a private
    name on something imported from another package."""
    tree = ast.parse(source)
    found, imported = _imports(module, tree)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and isinstance(node.value, ast.Name)
            and node.value.id in imported
        ):
            found.append(f"{module}:{node.lineno} touches {node.value.id}.{node.attr}")
    return found


def test_no_module_touches_a_private_name_of_another_package():
    problems = [v for module, f in _modules() for v in _violations(module, f.read_text())]
    assert problems == []


def test_the_private_name_check_catches_what_it_should():
    bad = (
        "from resdoctor.fixes._x import y\n"
        "from resdoctor.recording import recorder\n"
        "recorder._guard\n"
    )
    assert len(_violations("resdoctor.rules.z", bad)) == 2
    assert _violations("resdoctor.fixes.z", "from resdoctor.fixes._x import y\n") == []


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_is_a_package_with_a_one_line_purpose(stage):
    package = importlib.import_module(f"resdoctor.{stage}")
    doc = (package.__doc__ or "").strip()
    assert doc and len(doc.splitlines()[0]) <= 100, stage


def test_the_top_level_reads_as_the_data_flow():
    entries = {p.name for p in ROOT.iterdir() if not p.name.startswith((".", "__"))}
    loose = sorted(e for e in entries if e.endswith(".py"))
    assert set(STAGES) <= entries
    # besides the stages: shared vocabulary (findings, errors), the version, the demo (the main
    # job) and models/ (test models that ship with the package); nothing else loose
    assert loose == ["demo.py", "errors.py", "findings.py", "version.py"]
