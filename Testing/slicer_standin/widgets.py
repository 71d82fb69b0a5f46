"""The CTK and Slicer widgets of the module's .ui, in PySide6, with the properties, signals and slots the module
and the .ui use (from CTK's and Slicer's headers: ctkCollapsibleButton, ctkCollapsibleGroupBox, ctkDirectoryButton,
ctkSliderWidget, qMRMLWidget, qMRMLNodeComboBox, qSlicerMarkupsPlaceWidget). Node selectors list the scene's nodes
of their `nodeTypes` and follow the scene's node additions and removals, as qMRMLNodeComboBox does."""

from __future__ import annotations

from PySide6 import QtCore, QtWidgets

import slicer


class ctkCollapsibleButton(QtWidgets.QPushButton):
    """A checkable button holding a layout; `collapsed` is the negation of `checked`."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setCheckable(True)
        self.setChecked(True)

    def _collapsed(self):
        return not self.isChecked()

    def _setCollapsed(self, collapsed):
        self.setChecked(not collapsed)

    collapsed = QtCore.Property(bool, _collapsed, _setCollapsed)


class ctkCollapsibleGroupBox(QtWidgets.QGroupBox):
    def __init__(self, parent=None):
        super().__init__(parent)
        self._isCollapsed = False

    def _collapsed(self):
        return self._isCollapsed

    def _setCollapsed(self, collapsed):
        self._isCollapsed = bool(collapsed)

    collapsed = QtCore.Property(bool, _collapsed, _setCollapsed)


class ctkDirectoryButton(QtWidgets.QPushButton):
    directoryChanged = QtCore.Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._directory = ""

    def _getDirectory(self):
        return self._directory

    def _setDirectory(self, directory):
        if directory != self._directory:
            self._directory = directory
            self.directoryChanged.emit(directory)

    directory = QtCore.Property(str, _getDirectory, _setDirectory)


class ctkSliderWidget(QtWidgets.QDoubleSpinBox):
    """A spin box stands for the slider + spin box pair: value, range, steps and valueChanged(double)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._pageStep = 0.1

    def _getPageStep(self):
        return self._pageStep

    def _setPageStep(self, step):
        self._pageStep = step

    pageStep = QtCore.Property(float, _getPageStep, _setPageStep)


class qMRMLWidget(QtWidgets.QWidget):
    mrmlSceneChanged = QtCore.Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None

    def setMRMLScene(self, scene):
        if scene is not self._scene:
            self._scene = scene
            self.mrmlSceneChanged.emit(scene)


class qMRMLNodeComboBox(QtWidgets.QComboBox):
    """The scene's nodes of `nodeTypes` (plus "None" when `noneEnabled`); currentNodeChanged(vtkMRMLNode*)."""

    currentNodeChanged = QtCore.Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._nodeTypes = []
        self._noneEnabled = False
        self._scene = None
        self._observations = []
        self._current = None
        self.currentIndexChanged.connect(self._onIndexChanged)

    def _getNodeTypes(self):
        return list(self._nodeTypes)

    def _setNodeTypes(self, types):
        self._nodeTypes = list(types)
        self._refill()

    nodeTypes = QtCore.Property("QStringList", _getNodeTypes, _setNodeTypes)

    def _getNoneEnabled(self):
        return self._noneEnabled

    def _setNoneEnabled(self, enabled):
        self._noneEnabled = bool(enabled)
        self._refill()

    noneEnabled = QtCore.Property(bool, _getNoneEnabled, _setNoneEnabled)

    def setMRMLScene(self, scene):
        for node, tag in self._observations:
            node.RemoveObserver(tag)
        self._scene = scene
        self._observations = [] if scene is None else [
            (scene, scene.AddObserver(event, lambda caller, event: self._refill()))
            for event in (scene.NodeAddedEvent, scene.NodeRemovedEvent, scene.EndCloseEvent)]
        self._refill()

    def _nodes(self):
        if self._scene is None:
            return []
        nodes = []
        for nodeType in self._nodeTypes:
            collection = self._scene.GetNodesByClass(nodeType)
            nodes += [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]
        return [n for n in nodes if not n.GetHideFromEditors()]

    def _refill(self):
        current = self._current if self._current is not None and self._current.GetScene() is self._scene else None
        nodes = self._nodes()
        wasBlocked = self.blockSignals(True)
        self.clear()
        if self._noneEnabled:
            self.addItem("None", None)
        for node in nodes:
            self.addItem(node.GetName(), node.GetID())
        self.blockSignals(wasBlocked)
        if current is None and not self._noneEnabled and nodes:
            current = nodes[0]  # a selector without "None" selects the first node, as Slicer's does
        self.setCurrentNode(current, force=current is not self._current)

    def currentNode(self):
        return self._current

    def setCurrentNode(self, node, force=False):
        index = self.findData(node.GetID()) if node is not None else (0 if self._noneEnabled else -1)
        wasBlocked = self.blockSignals(True)
        self.setCurrentIndex(index)
        self.blockSignals(wasBlocked)
        if node is not self._current or force:
            self._current = node
            self.currentNodeChanged.emit(node)

    def _onIndexChanged(self, index):
        nodeID = self.itemData(index) if index >= 0 else None
        node = self._scene.GetNodeByID(nodeID) if (self._scene is not None and nodeID) else None
        if node is not self._current:
            self._current = node
            self.currentNodeChanged.emit(node)


class qSlicerMarkupsPlaceWidget(QtWidgets.QWidget):
    """The place button of a markups node: it turns Slicer's place mode on for its node (the selection node's
    active place node, the interaction node's Place mode, persistent when placing multiple markups)."""

    ShowPlaceMultipleMarkupsOption, HidePlaceMultipleMarkupsOption, ForcePlaceSingleMarkup, \
        ForcePlaceMultipleMarkups = range(4)

    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QtWidgets.QHBoxLayout(self)
        self._placeButton = QtWidgets.QToolButton(self)
        self._placeButton.setObjectName("PlaceButton")
        self._placeButton.setCheckable(True)
        self._placeButton.toggled.connect(self.setPlaceModeEnabled)
        layout.addWidget(self._placeButton)
        self._node = None
        self._scene = None
        self._buttonsVisible = True
        self._placeMultiple = self.ShowPlaceMultipleMarkupsOption
        self._interactionTag = None

    def _getButtonsVisible(self):
        return self._buttonsVisible

    def _setButtonsVisible(self, visible):
        self._buttonsVisible = bool(visible)

    buttonsVisible = QtCore.Property(bool, _getButtonsVisible, _setButtonsVisible)

    def _getPlaceMultiple(self):
        return self._placeMultiple

    def _setPlaceMultiple(self, value):
        self._placeMultiple = int(value)

    placeMultipleMarkups = QtCore.Property(int, _getPlaceMultiple, _setPlaceMultiple)

    def placeButton(self):
        return self._placeButton

    def setMRMLScene(self, scene):
        self._scene = scene

    def currentNode(self):
        return self._node

    def setCurrentNode(self, node):
        self._node = node
        self.setEnabled(node is not None)

    def _interactionNode(self):
        return slicer.app.applicationLogic().GetInteractionNode()

    def placeModeEnabled(self):
        interaction = self._interactionNode()
        selection = slicer.app.applicationLogic().GetSelectionNode()
        return (self._node is not None and interaction.GetCurrentInteractionMode() == interaction.Place
                and selection.GetActivePlaceNodeID() == self._node.GetID())

    def setPlaceModeEnabled(self, enabled):
        interaction = self._interactionNode()
        if self._interactionTag is None:
            self._interactionTag = interaction.AddObserver(
                interaction.InteractionModeChangedEvent, lambda caller, event: self._updateButton())
        if enabled and self._node is not None:
            selection = slicer.app.applicationLogic().GetSelectionNode()
            selection.SetReferenceActivePlaceNodeClassName(self._node.GetClassName())
            selection.SetActivePlaceNodeID(self._node.GetID())
            interaction.SetPlaceModePersistence(self._placeMultiple == self.ForcePlaceMultipleMarkups)
            interaction.SetCurrentInteractionMode(interaction.Place)
        elif not enabled and self.placeModeEnabled():
            interaction.SetCurrentInteractionMode(interaction.ViewTransform)
        self._updateButton()

    def _updateButton(self):
        wasBlocked = self._placeButton.blockSignals(True)
        self._placeButton.setChecked(self.placeModeEnabled())
        self._placeButton.blockSignals(wasBlocked)


CUSTOM_WIDGETS = (ctkCollapsibleButton, ctkCollapsibleGroupBox, ctkDirectoryButton, ctkSliderWidget, qMRMLWidget,
                  qMRMLNodeComboBox, qSlicerMarkupsPlaceWidget)
