"""`slicer.parameterNodeWrapper`, the part the module uses, written from Slicer's
Base/Python/slicer/parameterNodeWrapper/ (wrapper.py, validators.py, serializers.py, guiConnectors.py) at v5.6.2,
v5.8.1 and v5.10.0.

Kept: a decorated class wraps a vtkMRMLScriptedModuleNode; each annotated attribute is a typed property whose
value lives in the node (bool/int/float/str as a parameter string, an MRML node as a node reference named after
the attribute); a missing parameter gets its default when the wrapper is made; Minimum/WithinRange/Choice refuse
bad values with ValueError; connectGui(gui) binds every widget with a "SlicerParameterName" property (both ways:
a widget change writes the node, a node Modified event writes every bound widget (its signals fire), spin boxes take
the range and combo boxes the choices of the annotations); disconnectGui(tag) stops the widget side;
AddObserver/RemoveObserver/Modified/StartModify/EndModify pass to the node.
"""

from __future__ import annotations

import typing

import vtk
from PySide6 import QtWidgets

import slicer

from .pythonqt import unwrap
from .widgets import ctkSliderWidget, qMRMLNodeComboBox

SLICER_PARAMETER_NAME = "SlicerParameterName"


class Minimum:
    def __init__(self, minimum):
        self.minimum = minimum

    def validate(self, value):
        if value < self.minimum:
            raise ValueError(f"Value must be at least {self.minimum}, is {value}")


class WithinRange:
    def __init__(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum

    def validate(self, value):
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"Value must be within [{self.minimum}, {self.maximum}], is {value}")


class Choice:
    def __init__(self, choices):
        self.choices = list(choices)

    def validate(self, value):
        if value not in self.choices:
            raise ValueError(f"Value must be one of {self.choices}, is {value!r}")


class Parameter:
    """One annotated attribute: its type, validators and default, read from and written to the node."""

    def __init__(self, name, annotation, default):
        if typing.get_origin(annotation) is typing.Annotated:
            self.type, *self.validators = typing.get_args(annotation)
        else:
            self.type, self.validators = annotation, []
        self.name = name
        self.isNode = isinstance(self.type, type) and issubclass(self.type, slicer.vtkMRMLNode)
        self.default = None if self.isNode else (default if default is not None else self.type())

    def isIn(self, node):
        return self.isNode or node.GetParameter(self.name) != ""

    def read(self, node):
        if self.isNode:
            return node.GetNodeReference(self.name)
        text = node.GetParameter(self.name)
        return (text == "True") if self.type is bool else self.type(text)

    def write(self, node, value):
        if self.isNode:
            if value is not None and not value.IsA(self.type.__name__):
                raise ValueError(f"{self.name} must be a {self.type.__name__}, is a {value.GetClassName()}")
            node.SetNodeReferenceID(self.name, value.GetID() if value is not None else None)
            return
        value = self.type(value)
        for validator in self.validators:
            validator.validate(value)
        node.SetParameter(self.name, str(value))

    def validatorOf(self, kind):
        return next((v for v in self.validators if isinstance(v, kind)), None)


class GuiConnector:
    """A widget bound to a parameter: read(), write(value) without echo, onChanged(callback or None)."""

    def __init__(self, widget, parameter):
        self.widget, self.parameter = widget, parameter
        self.callback = None
        self.signal = self._signal()
        self._configure()

    def _signal(self):
        widget = self.widget
        if isinstance(widget, qMRMLNodeComboBox):
            return widget.currentNodeChanged
        if isinstance(widget, (QtWidgets.QSpinBox, ctkSliderWidget)):
            return widget.valueChanged
        if isinstance(widget, QtWidgets.QComboBox):
            return widget.currentIndexChanged
        if isinstance(widget, QtWidgets.QLineEdit):
            return widget.textChanged
        if isinstance(widget, QtWidgets.QCheckBox):
            return widget.toggled
        raise ValueError(f"no GUI connector for {type(widget).__name__} and {self.parameter.type}")

    def _configure(self):
        widget, parameter = self.widget, self.parameter
        if isinstance(widget, QtWidgets.QSpinBox):
            minimum, within = parameter.validatorOf(Minimum), parameter.validatorOf(WithinRange)
            if within is not None:
                widget.setRange(within.minimum, within.maximum)
            elif minimum is not None:
                widget.setRange(minimum.minimum, 2**31 - 1)
        elif isinstance(widget, ctkSliderWidget) and parameter.validatorOf(WithinRange) is not None:
            within = parameter.validatorOf(WithinRange)
            widget.setRange(within.minimum, within.maximum)
        elif isinstance(widget, QtWidgets.QComboBox) and not isinstance(widget, qMRMLNodeComboBox):
            choice = parameter.validatorOf(Choice)
            if choice is not None:
                widget.clear()
                for value in choice.choices:
                    widget.addItem(str(value), value)

    def read(self):
        widget = self.widget
        if isinstance(widget, qMRMLNodeComboBox):
            return widget.currentNode()
        if isinstance(widget, (QtWidgets.QSpinBox, ctkSliderWidget)):
            return widget.value()
        if isinstance(widget, QtWidgets.QComboBox):
            return widget.currentData()
        if isinstance(widget, QtWidgets.QLineEdit):
            return widget.text()
        return widget.isChecked()

    def write(self, value):
        """Set the widget's value; its signals fire as in Slicer (the wrapper's update flag stops the echo)."""
        widget = self.widget
        if isinstance(widget, qMRMLNodeComboBox):
            widget.setCurrentNode(value)
        elif isinstance(widget, (QtWidgets.QSpinBox, ctkSliderWidget)):
            widget.setValue(value)
        elif isinstance(widget, QtWidgets.QComboBox):
            widget.setCurrentIndex(widget.findData(value))
        elif isinstance(widget, QtWidgets.QLineEdit):
            widget.setText(value)
        else:
            widget.setChecked(value)

    def onChanged(self, callback):
        if self.callback is not None:
            self.signal.disconnect(self._changed)
        self.callback = callback
        if callback is not None:
            self.signal.connect(self._changed)

    def _changed(self, *args):
        self.callback()


class ParameterNodeWrapper:
    """Base of the decorated classes: the node, its typed properties and the GUI bindings."""

    allParameters: dict

    def __init__(self, parameterNode):
        self.parameterNode = parameterNode
        self._guis = {}
        self._nextTag = 0
        self._updatingGui = False
        self._guiObserver = None
        for parameter in self.allParameters.values():
            if not parameter.isIn(parameterNode):
                parameter.write(parameterNode, parameter.default)

    def getValue(self, name):
        return self.allParameters[name].read(self.parameterNode)

    def setValue(self, name, value):
        with slicer.util.NodeModify(self.parameterNode):
            self.allParameters[name].write(self.parameterNode, value)

    def connectGui(self, gui):
        widgets = {}
        for widget in vars(gui).values():
            name = unwrap(widget).property(SLICER_PARAMETER_NAME)
            if name:
                widgets[name] = unwrap(widget)
        return self.connectParametersToGui(widgets)

    def connectParametersToGui(self, mapping):
        unknown = set(mapping) - set(self.allParameters)
        if unknown:
            raise ValueError(f"Cannot find a param with the given name: {sorted(unknown)}")
        connectors = {name: GuiConnector(widget, self.allParameters[name]) for name, widget in mapping.items()}
        tag, self._nextTag = self._nextTag, self._nextTag + 1
        self._guis[tag] = connectors
        for name, connector in connectors.items():
            connector.write(self.getValue(name))
            connector.onChanged(self._guiToParameter(name, connector))
        if self._guiObserver is None:
            self._guiObserver = self.parameterNode.AddObserver(vtk.vtkCommand.ModifiedEvent,
                                                               lambda caller, event: self._parameterToGui())
        return tag

    def _guiToParameter(self, name, connector):
        def callback():
            if not self._updatingGui:
                self.setValue(name, connector.read())
        return callback

    def _parameterToGui(self):
        if self._updatingGui:
            return
        self._updatingGui = True
        try:
            for connectors in self._guis.values():
                for name, connector in connectors.items():
                    connector.write(self.getValue(name))
        finally:
            self._updatingGui = False

    def disconnectGui(self, tag):
        for connector in self._guis.pop(tag, {}).values():
            connector.onChanged(None)

    def AddObserver(self, event, callback, priority=0.0):
        return self.parameterNode.AddObserver(event, callback, priority)

    def RemoveObserver(self, tag):
        self.parameterNode.RemoveObserver(tag)

    def Modified(self):
        self.parameterNode.Modified()

    def StartModify(self):
        return self.parameterNode.StartModify()

    def EndModify(self, wasModified):
        return self.parameterNode.EndModify(wasModified)


def _parameterProperty(name):
    return property(lambda self: self.getValue(name), lambda self, value: self.setValue(name, value))


def parameterNodeWrapper(classtype):
    """The decorator: a ParameterNodeWrapper class with one property per annotated attribute."""
    hints = typing.get_type_hints(classtype, include_extras=True)
    parameters = {name: Parameter(name, hint, classtype.__dict__.get(name)) for name, hint in hints.items()}
    for parameter in parameters.values():
        if parameter.default is not None:
            for validator in parameter.validators:
                validator.validate(parameter.default)
    members = {name: _parameterProperty(name) for name in parameters}
    return type(classtype.__name__, (ParameterNodeWrapper,),
                {"__doc__": classtype.__doc__, "__module__": classtype.__module__, "allParameters": parameters,
                 **members})
