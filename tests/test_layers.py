"""The package layers: forcefield ← cg ← backmap ← cgwb. No package imports one to its right, not even
inside a function; nothing imports the application package ``cgwb`` except itself."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["forcefield", "cg", "backmap", "cgwb"]


def imported_packages(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in a file, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
    return out


def violations(root: Path = ROOT) -> list[str]:
    bad = []
    for rank, pkg in enumerate(LAYERS):
        for f in sorted((root / pkg).rglob("*.py")):
            for line, mod in imported_packages(f):
                if mod in LAYERS and LAYERS.index(mod) > rank:
                    bad.append(f"{f.relative_to(root)}:{line} imports {mod}")
    for folder in ("benchmarks", "notebooks", "examples"):
        for f in sorted((root / folder).rglob("*.py")) if (root / folder).exists() else []:
            for line, mod in imported_packages(f):
                if mod == "cgwb":
                    bad.append(f"{f.relative_to(root)}:{line} imports the application package cgwb")
    return bad


def test_no_upward_imports():
    assert violations() == []


def test_checker_sees_imports_inside_functions(tmp_path):
    """The checker itself: an import of a higher layer inside a function is caught."""
    for pkg in LAYERS:
        (tmp_path / pkg).mkdir()
    (tmp_path / "cg" / "bad.py").write_text("def f():\n    import backmap.api\n    from cgwb.cli import main\n")
    (tmp_path / "backmap" / "ok.py").write_text("from cg import Mapping\nimport forcefield\n")
    assert violations(tmp_path) == ["cg/bad.py:2 imports backmap", "cg/bad.py:3 imports cgwb"]


@pytest.mark.parametrize("pkg", LAYERS)
def test_layers_exist(pkg):
    assert (ROOT / pkg / "__init__.py").exists()
