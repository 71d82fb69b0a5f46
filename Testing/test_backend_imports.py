"""The backend package never imports Slicer's application modules (it must run in any Python, as the worker)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BACKEND = Path(__file__).resolve().parents[1] / "sdseg"
FORBIDDEN = {"slicer", "qt", "ctk", "vtk", "SDSegSlicerLib"}


def imported_top_level_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted(BACKEND.rglob("*.py")), ids=lambda p: str(p.relative_to(BACKEND)))
def test_backend_module_imports_no_slicer_or_qt(path):
    assert not imported_top_level_modules(path) & FORBIDDEN


def test_the_check_sees_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import qt\nfrom slicer.util import arrayFromVolume\nfrom . import sibling\n", encoding="utf-8")
    assert imported_top_level_modules(probe) & FORBIDDEN == {"qt", "slicer"}
