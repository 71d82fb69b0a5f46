"""The module in 3D Slicer's own Python: the import graph of SDSegSlicer.py (with its SDSegSlicerGui files) and of
every SDSegSlicerLib module loads with only what Slicer ships.

Slicer 5.6 bundles the Python distributions its SuperBuild names (backend_install.SLICER_SHIPPED: 5.8 and 5.10 ship
the same names) plus its own application modules (slicer, vtk, qt, ctk). This environment has far
more (the PyPI vtk wheel that slicer-core brings pulls matplotlib, for one), so an import that works here can crash
the module in Slicer. A subprocess imports, behind an import hook that refuses every other top-level module, the
module-level imports of SDSegSlicer.py (all but the application modules slicer-core lacks: qt, ctk,
slicer.ScriptedLoadableModule, slicer.parameterNodeWrapper) and every SDSegSlicerLib module, following their
whole import graph."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from slicerlib_testing import CLI_TIMEOUT_S, lib_python_path

from SDSegSlicerLib import backend_install

MODULE_SCRIPT = Path(__file__).resolve().parents[1] / "SDSegSlicer" / "SDSegSlicer.py"
LIB_DIR = MODULE_SCRIPT.parent / "SDSegSlicerLib"
# The module script and the Qt package it imports its classes from (their own imports are followed here).
MODULE_FILES = [MODULE_SCRIPT, *sorted((MODULE_SCRIPT.parent / "SDSegSlicerGui").glob("*.py"))]

# Import names of the distributions Slicer ships (the table the backend installer pins).
SLICER_SHIPPED = frozenset(name for names in backend_install.SLICER_SHIPPED.values() for name in names)
# The application's own modules (vtkmodules and slicer_core are how the PyPI vtk and slicer-core provide them).
SLICER_APPLICATION = frozenset({"slicer", "slicer_core", "vtk", "vtkmodules", "qt", "ctk"})
# Module-level imports of SDSegSlicer.py that only the Slicer application has (not slicer-core).
APPLICATION_ONLY_IMPORTS = ("qt", "ctk", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper")

IMPORT_GRAPH = r"""
import ast, importlib, json, pkgutil, sys
allowed = set(json.loads(sys.argv[1]))
application_only = tuple(json.loads(sys.argv[2]))
module_scripts, lib_dir, extra = sys.argv[3].split(","), sys.argv[4], sys.argv[5:]

import slicer, slicer.util, vtk  # the application's modules, loaded as Slicer loads them

def shipped(name):
    top = name.split(".")[0]
    return top in allowed or top in sys.stdlib_module_names or top == "SDSegSlicerLib"

for name in [n for n in sys.modules if not shipped(n)]:  # what they pulled in here must be imported anew
    del sys.modules[name]

class RefuseWhatSlicerDoesNotShip:
    def find_spec(self, name, path=None, target=None):
        if shipped(name):
            return None
        raise ModuleNotFoundError(f"No module named {name!r} (3D Slicer does not ship it)", name=name)

sys.meta_path.insert(0, RefuseWhatSlicerDoesNotShip())
body = [node for script in module_scripts for node in ast.parse(open(script, encoding="utf-8").read()).body]
for node in body:  # module-level imports: what `import SDSegSlicer` runs, through its SDSegSlicerGui files
    if isinstance(node, ast.Import):
        wanted = [(alias.name, None) for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and not node.module.startswith("SDSegSlicerGui"):
        wanted = [(node.module, alias.name) for alias in node.names]
    else:
        continue
    for module_name, attribute in wanted:
        if module_name.startswith(application_only):
            continue
        module = importlib.import_module(module_name)
        if attribute is not None and not hasattr(module, attribute):
            importlib.import_module(f"{module_name}.{attribute}")
import SDSegSlicerLib
for info in pkgutil.iter_modules([lib_dir]):
    importlib.import_module("SDSegSlicerLib." + info.name)
for name in extra:
    importlib.import_module(name)
print("IMPORTED", json.dumps(sorted({n.split(".")[0] for n in sys.modules} - set(sys.stdlib_module_names))))
"""


def import_like_slicer(*extra_modules: str) -> subprocess.CompletedProcess:
    allowed = sorted(SLICER_SHIPPED | SLICER_APPLICATION)
    return subprocess.run(
        [sys.executable, "-c", IMPORT_GRAPH, json.dumps(allowed), json.dumps(APPLICATION_ONLY_IMPORTS),
         ",".join(map(str, MODULE_FILES)), str(LIB_DIR), *extra_modules],
        capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
        env=dict(os.environ, PYTHONPATH=lib_python_path()))


def test_module_and_lib_import_with_only_what_slicer_ships():
    result = import_like_slicer()
    assert result.returncode == 0, result.stderr[-3000:]
    imported = set(json.loads(result.stdout.split("IMPORTED", 1)[1]))
    assert {"SDSegSlicerLib", "numpy", "SimpleITK", "slicer", "vtk"} <= imported
    # Compiled extensions register their runtimes in sys.modules themselves (not imports): SimpleITK's SWIG wrapper
    # swig_runtime_data<N>, charset_normalizer's Cython modules (through requests) cython_runtime and _cython_<V>.
    others = {name for name in imported - SLICER_SHIPPED - SLICER_APPLICATION
              if not name.startswith(("swig_runtime_data", "_cython_")) and name != "cython_runtime"}
    assert others == {"SDSegSlicerLib"}


@pytest.mark.parametrize("refused", ["matplotlib", "torch", "highdicom"])
def test_the_hook_refuses_what_slicer_does_not_ship(refused):
    """The check above can fail: packages installed here but not in Slicer are refused."""
    result = import_like_slicer(refused)
    assert result.returncode != 0 and f"No module named '{refused}' (3D Slicer does not ship it)" in result.stderr
