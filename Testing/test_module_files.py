"""Consistency of the Slicer module's files, checked without Slicer: the .ui, the parameter node, the module
script and its Qt package SDSegSlicerGui, the CMake lists and the icon (they cannot be imported outside Slicer, so
they are parsed)."""

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


@pytest.fixture(scope="module")
def module_tree():
    """The module script and SDSegSlicerGui parsed as one module."""
    trees = [ast.parse(path.read_text(encoding="utf-8"), filename=str(path)) for path in MODULE_FILES]
    return ast.Module(body=[node for tree in trees for node in tree.body], type_ignores=[])


def module_class(tree, name):
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    assert name in classes, f"class {name} missing from SDSegSlicer.py and SDSegSlicerGui"
    return classes[name]


def test_module_script_is_glue_that_names_its_classes():
    """Slicer looks the Module, Widget, Logic and Test classes up by name in SDSegSlicer.py."""
    text = MODULE_SCRIPT.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_MODULE_SCRIPT_LINES
    exported = ast.literal_eval(re.search(r"__all__ = (\[.*?\])", text, re.S).group(1))
    assert set(exported) == {"SDSegSlicer", "SDSegSlicerWidget", "SDSegSlicerLogic", "SDSegSlicerTest",
                             "SDSegSlicerParameterNode"}
    tree = ast.parse(text)
    defined = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    imported = {alias.name for node in tree.body if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert set(exported) <= defined | imported


def parameter_annotations(tree):
    """{parameter: annotation source} of the @parameterNodeWrapper class."""
    node = module_class(tree, "SDSegSlicerParameterNode")
    assert any(ast.unparse(d) == "parameterNodeWrapper" for d in node.decorator_list)
    return {s.target.id: ast.unparse(s.annotation) for s in node.body if isinstance(s, ast.AnnAssign)}


def slicer_parameter_names(ui_widgets):
    """{widget name: SlicerParameterName} from the widgets' dynamic properties."""
    bound = {}
    for name, widget in ui_widgets.items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                assert prop.get("stdset") == "0", f"{name}: SlicerParameterName must be a dynamic property"
                bound[name] = prop.findtext("string")
    return bound


def test_module_classes_follow_slicer_conventions(module_tree):
    bases = {
        "SDSegSlicer": {"ScriptedLoadableModule"},
        "SDSegSlicerWidget": {"ScriptedLoadableModuleWidget", "VTKObservationMixin"},
        "SDSegSlicerLogic": {"ScriptedLoadableModuleLogic", "SegmentationSession"},  # the Qt-free logic
        "SDSegSlicerTest": {"ScriptedLoadableModuleTest"},
    }
    for name, expected in bases.items():
        assert {ast.unparse(b) for b in module_class(module_tree, name).bases} == expected
    test_methods = {f.name for f in module_class(module_tree, "SDSegSlicerTest").body if isinstance(f, ast.FunctionDef)}
    assert "runTest" in test_methods and any(m.startswith("test_") for m in test_methods)


def test_parameter_node_has_the_documented_parameters(module_tree):
    annotations = parameter_annotations(module_tree)
    assert set(annotations) == {"inputVolume", "lesionPoints", "roi", "sliceStart", "sliceEnd", "stopAfterEmpty",
                                "model", "samples", "steps", "seed", "device", "pythonExecutable", "serverUrl",
                                "varianceOpacity"}
    assert annotations["inputVolume"] == "vtkMRMLScalarVolumeNode"
    assert annotations["lesionPoints"] == "vtkMRMLMarkupsFiducialNode"
    assert annotations["roi"] == "vtkMRMLMarkupsROINode"


def test_every_slicer_parameter_name_is_a_parameter(ui_widgets, module_tree):
    annotations = parameter_annotations(module_tree)
    bound = slicer_parameter_names(ui_widgets)
    assert len(bound) >= 9
    unknown = {w: p for w, p in bound.items() if p not in annotations}
    assert not unknown, f"widgets bound to parameters the parameter node lacks: {unknown}"
    assert len(set(bound.values())) == len(bound), "two widgets bound to one parameter"


def test_node_selectors_offer_the_parameter_node_type(ui_widgets, module_tree):
    annotations = parameter_annotations(module_tree)
    for name, parameter in slicer_parameter_names(ui_widgets).items():
        widget = ui_widgets[name]
        if widget.get("class") != "qMRMLNodeComboBox":
            continue
        node_types = [s.text for p in widget.findall("property") if p.get("name") == "nodeTypes"
                      for s in p.iter("string")]
        assert node_types == [annotations[parameter]], f"{name} offers {node_types}"


def test_every_widget_the_module_uses_is_in_the_ui(ui_widgets, module_tree):
    used = {node.attr for node in ast.walk(module_tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui" and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"}
    assert len(used) > 20
    missing = sorted(used - set(ui_widgets))
    assert not missing, f"SDSegSlicer.py uses widgets the .ui lacks: {missing}"


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
