"""The `qt` module of 3D Slicer (PythonQt) on PySide6, for the calls the module makes.

PythonQt differs from PySide6 in three ways the module relies on, reproduced here by a proxy around every QObject:
a Qt property reads and writes as an attribute (``button.enabled = False``, ``combo.count``; a property wins over a
method of the same name), signals connect by their C++ signature (``button.connect("clicked()", slot)``), and
QFileDialog.getOpenFileName returns the path alone. Everything else (methods, enums, value types such as
QKeySequence or QTableWidgetItem) is PySide6's own. A test chooses what a file dialog answers with
``answer_file_dialog(path)``.
"""

from __future__ import annotations

import types

from PySide6 import QtCore, QtGui, QtUiTools, QtWidgets

QT_MODULES = (QtWidgets, QtGui, QtCore, QtUiTools)
_file_dialog_answers: list[str] = []


def answer_file_dialog(path: str) -> None:
    """The path the next QFileDialog.getOpenFileName returns (the user's choice in the dialog)."""
    _file_dialog_answers.append(path)


def unwrap(value):
    return object.__getattribute__(value, "_qobject") if isinstance(value, QObjectProxy) else value


def wrap(value):
    """A QObject as its (unique) proxy; anything else unchanged; lists and tuples element by element."""
    if isinstance(value, QtCore.QObject):
        proxy = getattr(value, "_pythonqt_proxy", None)
        if proxy is None:
            proxy = QObjectProxy(value)
            value._pythonqt_proxy = proxy
        return proxy
    if isinstance(value, (list, tuple)):
        return type(value)(wrap(v) for v in value)
    return value


def wrap_callable(function):
    def call(*args, **kwargs):
        return wrap(function(*[unwrap(a) for a in args], **{k: unwrap(v) for k, v in kwargs.items()}))
    call.__name__ = getattr(function, "__name__", "call")
    return call


def signal_name(signature: str) -> str:
    """'currentIndexChanged(int)' -> 'currentIndexChanged'."""
    return signature.split("(", 1)[0].strip()


class QObjectProxy:
    """A QObject as PythonQt shows it (see the module docstring). Python attributes set on it that are not Qt
    properties stay on the proxy, as PythonQt keeps them on its wrapper."""

    def __init__(self, qobject):
        object.__setattr__(self, "_qobject", qobject)
        object.__setattr__(self, "_slots", {})

    def _property_index(self, name):
        qobject = object.__getattribute__(self, "_qobject")
        return qobject.metaObject().indexOfProperty(name)

    def __getattr__(self, name):
        qobject = object.__getattribute__(self, "_qobject")
        if self._property_index(name) >= 0:
            return wrap(qobject.property(name))
        attribute = getattr(qobject, name)
        if callable(attribute) and not isinstance(attribute, QtCore.SignalInstance):
            return wrap_callable(attribute)
        return attribute

    def __setattr__(self, name, value):
        qobject = object.__getattribute__(self, "_qobject")
        if self._property_index(name) >= 0:
            if not qobject.setProperty(name, unwrap(value)):
                raise AttributeError(f"cannot set the property {name} of {type(qobject).__name__} to {value!r}")
        else:
            object.__setattr__(self, name, value)

    def connect(self, signature: str, slot) -> bool:
        """PythonQt's connect: the signal by its C++ signature; the slot receives proxies."""
        def receive(*args):
            slot(*[wrap(a) for a in args])
        object.__getattribute__(self, "_slots")[(signal_name(signature), slot)] = receive
        getattr(object.__getattribute__(self, "_qobject"), signal_name(signature)).connect(receive)
        return True

    def disconnect(self, signature: str, slot) -> bool:
        receive = object.__getattribute__(self, "_slots").pop((signal_name(signature), slot), None)
        if receive is None:
            return False
        getattr(object.__getattribute__(self, "_qobject"), signal_name(signature)).disconnect(receive)
        return True

    def __eq__(self, other):
        return unwrap(self) is unwrap(other)

    def __hash__(self):
        return id(unwrap(self))

    def __bool__(self):
        return True

    def __repr__(self):
        return f"<PythonQt {type(unwrap(self)).__name__} {unwrap(self).objectName()!r}>"


class QtClassProxy:
    """A Qt class as PythonQt shows it: calling it constructs (proxied when a QObject), its static methods take
    and give proxies, its enums are PySide6's."""

    def __init__(self, cls):
        self._cls = cls

    def __call__(self, *args, **kwargs):
        return wrap(self._cls(*[unwrap(a) for a in args], **{k: unwrap(v) for k, v in kwargs.items()}))

    def __getattr__(self, name):
        attribute = getattr(self._cls, name)
        if callable(attribute) and not isinstance(attribute, type) and not hasattr(attribute, "__members__"):
            return wrap_callable(attribute)
        return attribute

    def __instancecheck__(self, instance):
        return isinstance(unwrap(instance), self._cls)


class FileDialogProxy(QtClassProxy):
    """QFileDialog: getOpenFileName returns one path (PythonQt), the one answer_file_dialog() gave; '' (the user
    cancelled) without one."""

    @staticmethod
    def getOpenFileName(*args):
        return _file_dialog_answers.pop(0) if _file_dialog_answers else ""


def build_qt_module(custom_classes=()) -> types.ModuleType:
    """The `qt` module: every class of QtWidgets, QtGui, QtCore and QtUiTools (and ``custom_classes``) by name."""
    module = types.ModuleType("qt", "PythonQt's qt module on PySide6 (SDSegSlicer test stand-in).")
    for qt_module in reversed(QT_MODULES):
        for name in dir(qt_module):
            if name.startswith("Q"):
                value = getattr(qt_module, name)
                setattr(module, name, QtClassProxy(value) if isinstance(value, type) else value)
    for cls in custom_classes:
        setattr(module, cls.__name__, QtClassProxy(cls))
    module.QFileDialog = FileDialogProxy(QtWidgets.QFileDialog)
    module.Qt = QtCore.Qt
    return module
