"""The application side of the stand-in: `slicer.app`, the main window with its slice views and module panel, the
module factory, `slicer.modules`, and the markups place mode as the slice views drive it.

Written from Slicer's sources at v5.6.2, v5.8.1, v5.10.0:
- qSlicerAbstractModuleFactoryManager::instantiateModules instantiates the registered modules in the order of a
  QMap's keys (alphabetical, case-sensitive); a loadable module's Python classes (for Markups:
  vtkMRMLMarkups*Node, qSlicerMarkupsPlaceWidget) enter `slicer` when it is instantiated, and a scripted module's
  file is executed then. qSlicerModuleFactoryManager::loadModule loads a module's `dependencies` first and, when
  the application was given explicit modules, loads any other module only as a dependency.
- A scripted module's widget representation is made on first selection: the Widget class with the representation
  as parent, then setup(); `slicer.modules.<Name>Widget` is the Python widget; selecting a module calls exit() on
  the one shown and enter() on the new one; reloadScriptedModule re-executes the module file only, cleans the old
  widget up and sets a new one up (Base/Python/slicer/util.py).
- Place mode (vtkMRMLMarkupsDisplayNode / vtkSlicerMarkupsWidget): while the interaction node is in Place mode and
  the mouse is over a view, the active place node holds an auto-created control point with PositionStatus
  PositionPreview (an undefined point is reused first); a click defines it; leaving the view removes it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import xml.etree.ElementTree as ET

from PySide6 import QtCore, QtUiTools, QtWidgets

import slicer

from .pythonqt import unwrap, wrap
from .widgets import CUSTOM_WIDGETS, qMRMLWidget

SLICE_VIEWS = ("Red", "Yellow", "Green")
MARKUPS_CLASS_PREFIXES = ("vtkMRMLMarkups", "vtkSlicerMarkups")
BUILT_IN_MODULES = {"Data": [], "Markups": [], "Segmentations": [], "SubjectHierarchy": []}


class ModuleManager(QtCore.QObject):
    moduleAboutToBeUnloaded = QtCore.Signal(str)

    def __init__(self, factory):
        super().__init__()
        self._factory = factory

    def factoryManager(self):
        return self._factory


class ScriptedModuleWidget(qMRMLWidget):
    """qSlicerScriptedLoadableModuleWidget: the panel a scripted module's Widget class draws into."""

    def __init__(self, module):
        super().__init__()
        self.setLayout(QtWidgets.QVBoxLayout())
        self.setMRMLScene(slicer.mrmlScene)
        self._module = module
        self._widget = None
        self._entered = False

    def _isEntered(self):
        return self._entered

    isEntered = QtCore.Property(bool, _isEntered)

    def self(self):
        return self._widget

    def reload(self):
        """Instantiate the Widget class of the (re-executed) module file and set it up."""
        widgetClass = getattr(sys.modules[self._module.name], self._module.name + "Widget")
        self._widget = widgetClass(wrap(self))
        self._widget.setup()
        setattr(slicer.modules, self._module.name + "Widget", self._widget)

    def enter(self):
        self._entered = True
        self._widget.enter()

    def exit(self):
        self._widget.exit()
        self._entered = False


class ScriptedModule:
    """qSlicerScriptedLoadableModule: the `parent` of the module class, and slicer.modules.<name>."""

    def __init__(self, name, path):
        self.name, self.path = name, path
        self.title = name
        self.categories, self.dependencies, self.contributors = [], [], []
        self.helpText = self.acknowledgementText = ""
        self.icon = None
        self.hidden = False
        self.instance = None
        self._representation = None

    def widgetRepresentation(self):
        if self._representation is None:
            self._representation = ScriptedModuleWidget(self)
            self._representation.reload()
        return wrap(self._representation)


class BuiltInModule:
    def __init__(self, name, dependencies):
        self.name, self.dependencies, self.path = name, list(dependencies), ""


class ModuleFactory:
    """Registers the built-in modules and the scripted modules' files, instantiates them in QMap order and loads
    them with their dependencies first (qSlicerModuleFactoryManager)."""

    def __init__(self, scriptedModules: dict, explicitModules=()):
        self.registered = {**{name: None for name in BUILT_IN_MODULES}, **scriptedModules}
        self.explicitModules = list(explicitModules)
        self.modules = {}
        self.loadedOrder = []

    def instantiateModules(self):
        for name in sorted(self.registered):  # QMap<QString, ...>::keys(): sorted
            self.instantiateModule(name)

    def instantiateModule(self, name):
        path = self.registered[name]
        if path is None:
            if name == "Markups":
                restore_markups_classes()
            module = BuiltInModule(name, BUILT_IN_MODULES[name])
        else:
            module = ScriptedModule(name, path)
            folder = os.path.dirname(path)
            if folder not in sys.path:
                sys.path.insert(0, folder)
            pythonModule = execute_module_file(name, path)
            module.instance = getattr(pythonModule, name)(module)
        self.modules[name] = module
        return module

    def loadModules(self):
        for name in sorted(self.registered):
            self.loadModule(name)

    def loadModule(self, name, dependee=None):
        if dependee is None and self.explicitModules and name not in self.explicitModules:
            return False
        if name not in self.modules:
            return False
        if name in self.loadedOrder:
            return True
        for dependency in self.modules[name].dependencies:
            if not self.loadModule(dependency, name):
                logging.warning(f"When loading module {name}, the dependency {dependency} failed to be loaded.")
                return False
        self.loadedOrder.append(name)
        setattr(slicer.modules, name.lower(), self.modules[name])
        return True

    def loadedModuleNames(self):
        return list(self.loadedOrder)


def execute_module_file(name, path):
    """Execute a scripted module's file as the Python module `name` (what Slicer does on instantiation and
    reloadScriptedModule does again)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_hidden_markups_classes: dict = {}


def hide_markups_classes():
    for name in [n for n in vars(slicer) if n.startswith(MARKUPS_CLASS_PREFIXES) or n == "qSlicerMarkupsPlaceWidget"]:
        _hidden_markups_classes[name] = vars(slicer).pop(name)


def restore_markups_classes():
    for name, value in _hidden_markups_classes.items():
        setattr(slicer, name, value)
    _hidden_markups_classes.clear()


class MarkupsPlacement:
    """What the mouse does to the active place node in a slice view while the interaction node is in Place mode."""

    def __init__(self, application):
        self._application = application

    def _placeNode(self):
        logic = self._application.applicationLogic()
        interaction, selection = logic.GetInteractionNode(), logic.GetSelectionNode()
        if interaction.GetCurrentInteractionMode() != interaction.Place:
            return None
        return slicer.mrmlScene.GetNodeByID(selection.GetActivePlaceNodeID() or "")

    def _previewIndex(self, node):
        return next((i for i in range(node.GetNumberOfControlPoints())
                     if node.GetNthControlPointPositionStatus(i) == node.PositionPreview), None)

    def hover(self, ras):
        """The mouse moves over a slice view at world position `ras`."""
        node = self._placeNode()
        if node is None:
            return
        index = self._previewIndex(node)
        if index is None:
            index = next((i for i in range(node.GetNumberOfControlPoints())
                          if node.GetNthControlPointPositionStatus(i) == node.PositionUndefined), None)
        identity = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        if index is None:
            index = node.AddControlPointWorld(ras)
            node.SetNthControlPointAutoCreated(index, True)
        node.SetNthControlPointPositionOrientationWorld(index, ras, identity, "", node.PositionPreview)

    def click(self, ras):
        """A left click in a slice view: the preview point becomes a defined point; place mode ends unless it is
        persistent."""
        self.hover(ras)
        node = self._placeNode()
        if node is None:
            return
        index = self._previewIndex(node)
        node.SetNthControlPointPositionWorld(index, *ras)  # PositionDefined
        interaction = self._application.applicationLogic().GetInteractionNode()
        if not interaction.GetPlaceModePersistence():
            interaction.SetCurrentInteractionMode(interaction.ViewTransform)

    def leave(self):
        """The mouse leaves the view: the preview point goes."""
        for node in slicer.util.getNodesByClass("vtkMRMLMarkupsNode"):
            index = self._previewIndex(node)
            if index is not None:
                node.RemoveNthControlPoint(index)


class ApplicationLogic:
    def __init__(self, scene):
        self._scene = scene

    def GetInteractionNode(self):
        return self._scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")

    def GetSelectionNode(self):
        return self._scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")


class LayoutManager:
    def __init__(self, sliceWidgets):
        self._sliceWidgets = sliceWidgets

    def sliceViewNames(self):
        return list(self._sliceWidgets)

    def sliceWidget(self, name):
        return wrap(self._sliceWidgets[name])


class SliceWidget(QtWidgets.QWidget):
    """qMRMLSliceWidget: a focusable view (no rendering)."""

    def __init__(self, name, parent):
        super().__init__(parent)
        self.setObjectName(f"qMRMLSliceWidget{name}")
        self.setFocusPolicy(QtCore.Qt.StrongFocus)

    def sliceView(self):
        return self


class Application:
    """slicer.app: events, settings, the module manager, the layout and the application logic."""

    def __init__(self, qapplication, factory):
        self._qapplication = qapplication
        self._factory = factory
        self._moduleManager = ModuleManager(factory)
        self._logic = ApplicationLogic(slicer.mrmlScene)
        self.mainWindow = QtWidgets.QMainWindow()
        self.mainWindow.setObjectName("qSlicerMainWindow")
        central = QtWidgets.QWidget(self.mainWindow)
        layout = QtWidgets.QHBoxLayout(central)
        self.modulePanel = QtWidgets.QWidget(central)
        self.modulePanel.setObjectName("ModulePanel")
        self.modulePanel.setLayout(QtWidgets.QVBoxLayout())
        layout.addWidget(self.modulePanel)
        sliceWidgets = {name: SliceWidget(name, central) for name in SLICE_VIEWS}
        for widget in sliceWidgets.values():
            layout.addWidget(widget)
        self.mainWindow.setCentralWidget(central)
        self._layoutManager = LayoutManager(sliceWidgets)
        self.markupsPlacement = MarkupsPlacement(self)
        self.selectedModule = None

    def processEvents(self, *args):
        self._qapplication.processEvents(*args)

    def moduleManager(self):
        return wrap(self._moduleManager)

    def layoutManager(self):
        return self._layoutManager

    def applicationLogic(self):
        return self._logic

    def selectModule(self, name):
        """The module panel shows module `name`: exit() on the module shown, enter() on the new one."""
        if self.selectedModule == name:
            return
        if isinstance(self._factory.modules.get(self.selectedModule), ScriptedModule):
            unwrap(self._factory.modules[self.selectedModule].widgetRepresentation()).exit()
        self.selectedModule = name
        module = self._factory.modules[name]
        if isinstance(module, ScriptedModule):  # the built-in modules' panels are not drawn
            representation = unwrap(module.widgetRepresentation())
            self.modulePanel.layout().addWidget(representation)
            representation.enter()

    def unloadModules(self):
        """Application exit: moduleAboutToBeUnloaded for every loaded module, the last loaded first."""
        for name in reversed(self._factory.loadedModuleNames()):
            self._moduleManager.moduleAboutToBeUnloaded.emit(name)

    def reloadScriptedModule(self, name):
        """slicer.util.reloadScriptedModule: re-execute the module file, clean the old widget up, set up a new one."""
        module = self._factory.modules[name]
        reloaded = execute_module_file(name, module.path)
        representation = unwrap(module.widgetRepresentation())
        oldWidget = getattr(slicer.modules, name + "Widget", None)
        if oldWidget is not None:
            oldWidget.cleanup()
            if hasattr(oldWidget, "_onModuleAboutToBeUnloaded"):
                self.moduleManager().disconnect("moduleAboutToBeUnloaded(QString)", oldWidget._onModuleAboutToBeUnloaded)
        layout = representation.layout()
        while layout.count():
            item = layout.takeAt(0)
            if item.widget() is not None:
                item.widget().hide()
        representation.reload()
        if self.selectedModule == name:
            representation.enter()
        return reloaded


def load_ui(path):
    """slicer.util.loadUI: the .ui's widgets, with its scene connections (the qMRMLWidget's
    mrmlSceneChanged(vtkMRMLScene*) to each selector's setMRMLScene) made here: a PySide6 signal cannot carry the
    C++ type in its signature, so QUiLoader gets the .ui without its <connections>."""
    if not os.path.isfile(path):
        raise RuntimeError(f"Could not load UI file: file not found {path}")
    root = ET.parse(path).getroot()
    connections = root.find("connections")
    if connections is not None:
        root.remove(connections)
    loader = QtUiTools.QUiLoader()
    for cls in CUSTOM_WIDGETS:
        loader.registerCustomWidget(cls)
    buffer = QtCore.QBuffer()
    buffer.setData(QtCore.QByteArray(ET.tostring(root)))
    buffer.open(QtCore.QIODevice.ReadOnly)
    widget = loader.load(buffer)
    if widget is None:
        raise RuntimeError(f"Could not load UI file: {path}")
    for connection in [] if connections is None else connections.iter("connection"):
        sender = widget if connection.findtext("sender") == widget.objectName() else widget.findChild(
            QtCore.QObject, connection.findtext("sender"))
        receiver = widget.findChild(QtCore.QObject, connection.findtext("receiver"))
        signal = getattr(sender, connection.findtext("signal").split("(")[0])
        signal.connect(getattr(receiver, connection.findtext("slot").split("(")[0]))
    return wrap(widget)


def child_widget_variables(widget):
    """slicer.util.childWidgetVariables: every named child widget as an attribute."""
    ui = type("", (), {})()
    for child in unwrap(widget).findChildren(QtWidgets.QWidget):
        if child.objectName():
            setattr(ui, child.objectName(), wrap(child))
    return ui
