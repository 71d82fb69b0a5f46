"""A stand-in for the 3D Slicer application, for running the SDSegSlicer module in pytest.

MRML is real: slicer-core's `slicer` module (vtkMRMLScene, the MRML node classes, slicer.util's array helpers).
On it the stand-in layers what only the application has, written from Slicer's sources at v5.6.2, v5.8.1 and
v5.10.0 (see each file): `qt` as PythonQt shows Qt (pythonqt.py, on PySide6, off-screen), the CTK/MRML widgets of
the module's .ui (widgets.py), `slicer.ScriptedLoadableModule` (scripted_module.py), `slicer.parameterNodeWrapper`
(parameter_nodes.py), and `slicer.app`, the main window, the module factory, `slicer.modules` and place mode
(application.py). docs/architecture.md says what it covers and what only a real Slicer can check.

    application = slicer_standin.install({"SDSegSlicer": path_of_SDSegSlicer.py})
    ...
    slicer_standin.uninstall()
"""

from __future__ import annotations

import os
import sys
import tempfile
import types

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6 import QtCore, QtWidgets  # noqa: E402

import slicer  # noqa: E402
import slicer.util  # noqa: E402

from . import application as app_module  # noqa: E402
from . import pythonqt, widgets  # noqa: E402

_installed: dict = {}
_qt_and_ctk: list = []


def _qt_modules():
    """`qt` and `ctk`, made once per process (the Python modules that imported them keep them)."""
    if not _qt_and_ctk:
        ctk_module = types.ModuleType("ctk", "CTK's widgets (stand-in)")
        for cls in widgets.CUSTOM_WIDGETS:
            if cls.__name__.startswith("ctk"):
                setattr(ctk_module, cls.__name__, pythonqt.QtClassProxy(cls))
        _qt_and_ctk.extend([pythonqt.build_qt_module(widgets.CUSTOM_WIDGETS), ctk_module])
    return _qt_and_ctk


def _util_functions(application):
    """The slicer.util functions that need the application, bound to the stand-in's."""
    factory = application._factory

    def settingsValue(key, default, converter=lambda v: v, settings=None):
        settings = settings or QtCore.QSettings()
        return converter(settings.value(key)) if settings.contains(key) else default

    return {
        "loadUI": app_module.load_ui,
        "childWidgetVariables": app_module.child_widget_variables,
        "mainWindow": lambda: pythonqt.wrap(application.mainWindow),
        "startupEnvironment": lambda: dict(os.environ),
        "selectModule": lambda module: application.selectModule(module if isinstance(module, str) else module.name),
        "reloadScriptedModule": application.reloadScriptedModule,
        "modulePath": lambda name: factory.modules[name].path,
        "getModule": lambda name: factory.modules[name],
        "getModuleWidget": lambda name: factory.modules[name].widgetRepresentation().self(),
        "moduleNames": factory.loadedModuleNames,
        "settingsValue": settingsValue,
        "delayDisplay": lambda message, autoCloseMsec=1000, parent=None, **kwargs: application.processEvents(),
    }


def install(scripted_modules: dict, explicit_modules=()) -> app_module.Application:
    """Make `import qt`, `import ctk`, `slicer.app`, `slicer.modules`, `slicer.ScriptedLoadableModule` and
    `slicer.parameterNodeWrapper` what Slicer gives, on a fresh scene; instantiate and load the built-in modules and
    ``scripted_modules`` ({name: path of its .py}) as Slicer's module factory does. Settings go to a temporary
    folder."""
    if _installed:
        raise RuntimeError("the Slicer stand-in is installed already: uninstall() it first")
    settings_dir = tempfile.mkdtemp(prefix="slicer-standin-settings-")
    QtCore.QSettings.setDefaultFormat(QtCore.QSettings.IniFormat)
    QtCore.QSettings.setPath(QtCore.QSettings.IniFormat, QtCore.QSettings.UserScope, settings_dir)
    QtCore.QCoreApplication.setOrganizationName("slicer-standin")
    qapplication = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["Slicer"])

    qt_module, ctk_module = _qt_modules()
    saved_modules = {name: sys.modules.get(name) for name in ("qt", "ctk", "slicer.ScriptedLoadableModule",
                                                              "slicer.parameterNodeWrapper")}
    sys.modules.update({"qt": qt_module, "ctk": ctk_module})
    from . import parameter_nodes, scripted_module  # they import qt

    wrapper_module = types.ModuleType("slicer.parameterNodeWrapper")
    for name in ("parameterNodeWrapper", "Minimum", "WithinRange", "Choice"):
        setattr(wrapper_module, name, getattr(parameter_nodes, name))
    sys.modules.update({"slicer.parameterNodeWrapper": wrapper_module, "slicer.ScriptedLoadableModule": scripted_module})

    scene = slicer.vtkMRMLScene()
    for node_class, tag in (("vtkMRMLInteractionNode", "Singleton"), ("vtkMRMLSelectionNode", "Singleton")):
        node = scene.CreateNodeByClass(node_class)
        node.UnRegister(None)
        node.SetSingletonTag(tag)
        scene.AddNode(node)
    for view in app_module.SLICE_VIEWS:
        for node_class in ("vtkMRMLSliceNode", "vtkMRMLSliceCompositeNode"):
            node = scene.CreateNodeByClass(node_class)
            node.UnRegister(None)
            node.SetSingletonTag(view)
            node.SetLayoutName(view)
            scene.AddNode(node)

    saved_attributes = {name: getattr(slicer, name, None) for name in (
        "app", "mrmlScene", "modules", "ScriptedLoadableModule", "parameterNodeWrapper", "qMRMLWidget",
        "qSlicerMarkupsPlaceWidget", "selfTests")}
    saved_util = {}
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace()
    slicer.ScriptedLoadableModule = scripted_module
    slicer.parameterNodeWrapper = wrapper_module
    slicer.qMRMLWidget = pythonqt.QtClassProxy(widgets.qMRMLWidget)
    app_module.hide_markups_classes()
    app_module._hidden_markups_classes["qSlicerMarkupsPlaceWidget"] = pythonqt.QtClassProxy(
        widgets.qSlicerMarkupsPlaceWidget)

    factory = app_module.ModuleFactory(scripted_modules, explicit_modules)
    application = app_module.Application(qapplication, factory)
    slicer.app = application
    for name, function in _util_functions(application).items():
        saved_util[name] = getattr(slicer.util, name, None)
        setattr(slicer.util, name, function)
    _installed.update(saved_modules=saved_modules, saved_attributes=saved_attributes, saved_util=saved_util,
                      application=application, path=list(sys.path), imported=dict(sys.modules))
    try:
        factory.instantiateModules()
        factory.loadModules()
    except BaseException:
        uninstall()
        raise
    application.mainWindow.show()
    return application


def _forget_module_imports(imported: dict, module_folders: list) -> None:
    """Forget what the scripted modules imported from their folders (the next install() starts like a new Slicer)
    and put back the modules a reload imported anew over ones ``imported`` before install(), so that the rest of
    the process keeps using one copy of each."""
    for name, module in list(sys.modules.items()):
        path = os.path.abspath(getattr(module, "__file__", None) or "")
        if name not in imported and any(path.startswith(os.path.abspath(f) + os.sep) for f in module_folders):
            del sys.modules[name]
    reloaded = {name for name, module in imported.items() if sys.modules.get(name, module) is not module}
    packages = {name.split(".")[0] for name in reloaded}
    for name in [n for n in sys.modules if n.split(".")[0] in packages and n not in imported]:
        del sys.modules[name]
    for name in reloaded:
        sys.modules[name] = imported[name]


def uninstall() -> None:
    """Undo install(): the application's modules unloaded (their widgets cleaned up), slicer and sys.modules as
    they were, the module's own Python modules forgotten."""
    if not _installed:
        return
    application = _installed["application"]
    application.unloadModules()
    application.mainWindow.close()
    app_module.restore_markups_classes()
    for name, value in _installed["saved_attributes"].items():
        if value is None:
            vars(slicer).pop(name, None)
        else:
            setattr(slicer, name, value)
    for name, value in _installed["saved_util"].items():
        setattr(slicer.util, name, value)
    for name, module in _installed["saved_modules"].items():
        if module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = module
    _forget_module_imports(_installed["imported"], [os.path.dirname(path) for path in
                                                    application._factory.registered.values() if path])
    sys.path[:] = _installed["path"]
    QtWidgets.QApplication.processEvents()
    _installed.clear()
