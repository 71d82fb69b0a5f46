"""`slicer.ScriptedLoadableModule`, written from Slicer's Base/Python/slicer/ScriptedLoadableModule.py at v5.6.2,
v5.8.1 and v5.10.0 (the class chains are the same at the three tags; 5.8 added translations and the
``hasattr(self, "reloadTestMenuButton")`` guards).

What is kept exactly, because modules depend on it: every base class's ``__init__`` calls ``super().__init__()``
with no arguments (so a later base in a module class's MRO is called with none), the module name from the class
name, the self test registered in ``slicer.selfTests``, the Logic's singleton parameter node (a
vtkMRMLScriptedModuleNode tagged with the module name), the Widget's parent/layout/setup order, its cleanup on
``moduleAboutToBeUnloaded(QString)`` and its reload through ``slicer.util.reloadScriptedModule``. Left out: the
developer section's buttons (developer mode is off, as in a user's Slicer) and screenshots.
"""

from __future__ import annotations

import importlib
import logging
import os
import unittest

import qt
import slicer

__all__ = ["ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
           "ScriptedLoadableModuleTest"]


class ScriptedLoadableModule:
    def __init__(self, parent):
        super().__init__()
        self.parent = parent
        self.moduleName = self.__class__.__name__
        parent.title = ""
        parent.categories = []
        parent.dependencies = []
        parent.contributors = []
        parent.helpText = ""
        parent.acknowledgementText = ""
        iconPath = os.path.join(os.path.dirname(parent.path), "Resources", "Icons", self.moduleName + ".png")
        if os.path.isfile(iconPath):
            parent.icon = qt.QIcon(iconPath)
        if not hasattr(slicer, "selfTests"):
            slicer.selfTests = {}
        slicer.selfTests[self.moduleName] = self.runTest

    def resourcePath(self, filename):
        return os.path.join(os.path.dirname(self.parent.path), "Resources", filename)

    def runTest(self, msec=100, **kwargs):
        """Run <ModuleName>Test from the module's own Python module."""
        module = importlib.import_module(self.__module__)
        testCaseClass = getattr(module, self.moduleName + "Test", None)
        if testCaseClass is None:
            raise AssertionError(f"Test case class not found: {self.__module__}.{self.moduleName}Test ")
        testCase = testCaseClass()
        testCase.messageDelay = msec
        testCase.runTest(**kwargs)


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        super().__init__()
        self.moduleName = self.__class__.__name__
        if self.moduleName.endswith("Widget"):
            self.moduleName = self.moduleName[: -len("Widget")]
        self.developerMode = slicer.util.settingsValue("Developer/DeveloperMode", False,
                                                       converter=slicer.util.toBool)
        if not parent:
            self.parent = slicer.qMRMLWidget()
            self.parent.setLayout(qt.QVBoxLayout())
            self.parent.setMRMLScene(slicer.mrmlScene)
        else:
            self.parent = parent
        self.layout = self.parent.layout()
        if not parent:
            self.setup()
            self.parent.show()
        slicer.app.moduleManager().connect("moduleAboutToBeUnloaded(QString)", self._onModuleAboutToBeUnloaded)

    def resourcePath(self, filename):
        return os.path.join(os.path.dirname(slicer.util.modulePath(self.moduleName)), "Resources", filename)

    def cleanup(self):
        pass

    def _onModuleAboutToBeUnloaded(self, moduleName):
        if moduleName == self.moduleName:
            self.cleanup()
            slicer.app.moduleManager().disconnect("moduleAboutToBeUnloaded(QString)",
                                                  self._onModuleAboutToBeUnloaded)

    def setupDeveloperSection(self):
        if self.developerMode:
            logging.info("developer section: not drawn by the stand-in")

    def setup(self):
        self.setupDeveloperSection()

    def onReload(self):
        slicer.util.reloadScriptedModule(self.moduleName)

    def onTest(self, **kwargs):
        slicer.selfTests[self.moduleName](msec=0, **kwargs)

    def onReloadAndTest(self, **kwargs):
        self.onReload()
        slicer.selfTests[self.moduleName](msec=0, **kwargs)


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        super().__init__()
        self.moduleName = self.__class__.__name__
        if self.moduleName.endswith("Logic"):
            self.moduleName = self.moduleName[: -len("Logic")]
        self.isSingletonParameterNode = True

    def getParameterNode(self):
        """The module's parameter node of the scene, created (and added) if there is none."""
        if self.isSingletonParameterNode:
            node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node:
                if node.GetAttribute("ModuleName") != self.moduleName:  # a scene close removes attributes
                    node.SetAttribute("ModuleName", self.moduleName)
                return node
        else:
            for node in self.getAllParameterNodes():
                return node
        return slicer.mrmlScene.AddNode(self.createParameterNode())

    def getAllParameterNodes(self):
        return [node for node in slicer.util.getNodesByClass("vtkMRMLScriptedModuleNode")
                if node.GetAttribute("ModuleName") == self.moduleName]

    def createParameterNode(self):
        if slicer.mrmlScene is None:
            return None
        node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        if self.isSingletonParameterNode:
            node.SetSingletonTag(self.moduleName)
        node.SetAttribute("ModuleName", self.moduleName)
        node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def __init__(self, *args, **kwargs):
        self.moduleTestNames = []
        super().__init__(*args, **kwargs)
        super(unittest.TestCase, self).__init__()  # the mixins after TestCase, with object()'s signature
        self.enableScreenshots = False
        self.screenshotScaleFactor = 1.0
        if not self.moduleTestNames:
            self.moduleTestNames = [name for name in dir(self) if "test" in name and callable(getattr(self, name))]

    def delayDisplay(self, message, requestedDelay=None, msec=None):
        slicer.util.delayDisplay(message, msec if msec is not None else requestedDelay or 0)

    def takeScreenshot(self, name, description, type=-1):
        self.delayDisplay(description)

    def setUp(self):
        pass

    def runTest(self):
        pass
