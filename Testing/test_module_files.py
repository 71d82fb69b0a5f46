"""Consistency of the Slicer module's files as files: the .ui's declarations, the module script's size, what the
module and lib import, the CMake lists and the icon. How the module behaves in Slicer (its classes, parameter node,
widgets) is tested by running it: test_slicer_module.py, in the Slicer stand-in."""

from __future__ import annotations

import ast
import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "SDSegSlicer"
MODULE_SCRIPT = MODULE_DIR / "SDSegSlicer.py"
LIB_DIR = MODULE_DIR / "SDSegSlicerLib"
GUI_DIR = MODULE_DIR / "SDSegSlicerGui"
MODULE_FILES = [MODULE_SCRIPT, *sorted(GUI_DIR.glob("*.py"))]  # the module's classes: SDSegSlicer.py imports them
MAX_MODULE_SCRIPT_LINES = 300
UI_FILE = MODULE_DIR / "Resources" / "UI" / "SDSegSlicer.ui"
ICON_FILE = MODULE_DIR / "Resources" / "Icons" / "SDSegSlicer.png"
MODULE_CMAKE = MODULE_DIR / "CMakeLists.txt"


@pytest.fixture(scope="module")
def ui_widgets():
    """{name: <widget> element} of every widget in the .ui."""
    root = ET.parse(UI_FILE).getroot()
    assert root.tag == "ui" and root.findtext("class") == "SDSegSlicer"
    widgets = root.iter("widget")
    by_name = {}
    for widget in widgets:
        name = widget.get("name")
        assert name not in by_name, f"widget name {name} used twice"
        by_name[name] = widget
    return by_name


def test_module_script_is_short_glue():
    """Slicer executes SDSegSlicer.py itself: it only names the classes of SDSegSlicerGui."""
    assert len(MODULE_SCRIPT.read_text(encoding="utf-8").splitlines()) <= MAX_MODULE_SCRIPT_LINES


def slicer_parameter_names(ui_widgets):
    """{widget name: SlicerParameterName} from the widgets' dynamic properties."""
    bound = {}
    for name, widget in ui_widgets.items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                assert prop.get("stdset") == "0", f"{name}: SlicerParameterName must be a dynamic property"
                bound[name] = prop.findtext("string")
    return bound


def test_no_parameter_is_bound_to_two_widgets(ui_widgets):
    bound = slicer_parameter_names(ui_widgets)
    assert len(bound) >= 9
    assert len(set(bound.values())) == len(bound), "two widgets bound to one parameter"


def test_custom_widgets_are_declared_and_node_selectors_get_the_scene(ui_widgets):
    root = ET.parse(UI_FILE).getroot()
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    qt_classes = {w.get("class") for w in ui_widgets.values() if not w.get("class").startswith("Q")}
    assert qt_classes <= declared
    scene_receivers = {c.findtext("receiver") for c in root.iter("connection")
                       if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    node_selectors = {n for n, w in ui_widgets.items() if w.get("class") == "qMRMLNodeComboBox"}
    assert node_selectors and node_selectors <= scene_receivers


def imported_modules(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in ("__import__", "importlib.import_module"):
            names.update(a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str))
    return names


def test_module_lib_and_web_app_never_import_torch():
    files = [*MODULE_FILES, *sorted(LIB_DIR.glob("*.py")), *sorted((REPO / "SDSegSlicerWeb").glob("*.py"))]
    assert LIB_DIR / "module_logic.py" in files
    offenders = {f.name: sorted(m for m in imported_modules(f) if m.split(".")[0] == "torch") for f in files}
    assert REPO / "SDSegSlicerWeb" / "app.py" in files
    assert not {f: m for f, m in offenders.items() if m}, "the MRML side imports torch"


def cmake_listed_files(path, prefix_variable="${MODULE_NAME}"):
    text = re.sub(r"#.*", "", path.read_text(encoding="utf-8"))
    return {token.replace(prefix_variable, "SDSegSlicer") for token in re.findall(r"[\w${}/.-]+\.(?:py|ui|png)", text)}


def test_cmake_lists_every_lib_file_and_resource():
    listed = cmake_listed_files(MODULE_CMAKE)
    lib_files = {f"{folder.name}/{p.name}" for folder in (LIB_DIR, GUI_DIR) for p in folder.glob("*.py")}
    assert lib_files <= listed, f"not in SDSegSlicer/CMakeLists.txt: {sorted(lib_files - listed)}"
    assert {"SDSegSlicer.py", "Resources/UI/SDSegSlicer.ui", "Resources/Icons/SDSegSlicer.png"} <= listed
    missing = sorted(f for f in listed if not (MODULE_DIR / f).is_file())
    assert not missing, f"SDSegSlicer/CMakeLists.txt lists files that do not exist: {missing}"


def test_extension_cmake_declares_the_extension():
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"project\(SDSegSlicer\)", text)
    assert re.search(r'set\(EXTENSION_DEPENDS\s+"PyTorch"\)', text)
    assert re.search(r'set\(EXTENSION_CATEGORY\s+"Segmentation"\)', text)
    for line in ("find_package(Slicer REQUIRED)", "add_subdirectory(SDSegSlicer)", "${Slicer_EXTENSION_CPACK}"):
        assert line in text
    tests = (MODULE_DIR / "Testing" / "Python" / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicer_add_python_unittest" in tests and "${MODULE_NAME}.py" in tests


def test_icon_is_a_128_pixel_png():
    data = ICON_FILE.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (128, 128)
