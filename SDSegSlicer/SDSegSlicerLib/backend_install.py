"""What the module needs in 3D Slicer's Python, what is missing, and how to install it without replacing anything
Slicer ships.

The worker needs torch (from the PyTorch extension's installer: the right CUDA build), diffusers, safetensors,
tqdm and the `sdseg` backend; the module's DICOM SEG export needs highdicom. pip runs with a constraints file that
pins every distribution Slicer ships to its installed version, so it resolves what fits them (with Slicer 5.10's
pydicom 2.4.4 that is highdicom 0.22, the last release for pydicom 2) instead of replacing them.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import importlib.util
from pathlib import Path

from .worker_client import backend_root

# Distributions in Slicer 5.6's Python -> their top-level import names: SuperBuild/External_python-{pip,setuptools,
# wheel,numpy,scipy,pythonqt-requirements,requests-requirements,dicom-requirements,extension-manager-requirements,
# extension-manager-ssl-requirements}.cmake at v5.6.0, and SimpleITK (External_SimpleITK.cmake). Slicer 5.8 and
# 5.10 ship the same distributions, in newer versions.
SLICER_SHIPPED = {
    "pip": ("pip",), "setuptools": ("setuptools", "pkg_resources", "_distutils_hack"), "wheel": ("wheel",),
    "numpy": ("numpy",), "scipy": ("scipy",), "packaging": ("packaging",), "pyparsing": ("pyparsing",),
    "six": ("six",), "certifi": ("certifi",), "idna": ("idna",), "charset-normalizer": ("charset_normalizer",),
    "urllib3": ("urllib3",), "requests": ("requests",), "pydicom": ("pydicom",), "Pillow": ("PIL",),
    "retrying": ("retrying",), "dicomweb-client": ("dicomweb_client",), "chardet": ("chardet",),
    "CouchDB": ("couchdb",), "gitdb": ("gitdb",), "smmap": ("smmap",), "GitPython": ("git",),
    "cryptography": ("cryptography",), "PyJWT": ("jwt",), "wrapt": ("wrapt",), "Deprecated": ("deprecated",),
    "pycparser": ("pycparser",), "cffi": ("cffi", "_cffi_backend"), "PyNaCl": ("nacl",),
    "python-dateutil": ("dateutil",), "typing-extensions": ("typing_extensions",), "PyGithub": ("github",),
    "SimpleITK": ("SimpleITK",),
}
# Modules the worker imports (torch: through the PyTorch extension) and the module's optional DICOM SEG writer.
WORKER_MODULES = ("torch", "diffusers", "safetensors", "tqdm", "sdseg")
DICOM_SEG_MODULE = "highdicom"
REQUIREMENTS = ("diffusers>=0.30", "safetensors>=0.4", "tqdm>=4.60", "highdicom>=0.22")


def _found(name: str, extra_path: list[str]) -> bool:
    return (importlib.util.find_spec(name) is not None
            or bool(extra_path) and importlib.machinery.PathFinder.find_spec(name, extra_path) is not None)


def missing_modules() -> list[str]:
    """What 'Install backend' would add, found without importing anything: worker modules a worker started from
    this Python could not import (on sys.path, or in the folder worker_client.backend_root() puts on the worker's
    PYTHONPATH: Slicer puts only the module's own folder on sys.path, while `sdseg` sits beside it or in the
    repository), then highdicom if the module's DICOM SEG export lacks it."""
    importlib.invalidate_caches()  # see packages pip installed since the last look
    root = backend_root()
    worker_path = [str(root)] if root is not None else []
    missing = [name for name in WORKER_MODULES if not _found(name, worker_path)]
    return missing + ([DICOM_SEG_MODULE] if not _found(DICOM_SEG_MODULE, []) else [])


def status(python_executable: str, server_url: str = "") -> tuple[str, bool]:
    """(status line, whether 'Install backend' has something to do) for the interpreter and server fields' texts:
    the texts themselves, never values read elsewhere (a field's signal may arrive before the parameter node has
    it)."""
    if server_url.strip():
        return "The worker runs on the server above.", False
    if python_executable.strip():
        return "The worker runs in the Python interpreter above.", False
    missing = missing_modules()
    if not missing:
        return "Backend installed in Slicer's Python.", False
    if missing == [DICOM_SEG_MODULE]:
        return ("Backend installed in Slicer's Python; DICOM SEG export needs highdicom: click 'Install backend'.",
                True)
    return (f"Missing in Slicer's Python: {', '.join(missing)}. Click 'Install backend', or set a Python "
            "interpreter that has them.", True)


def shipped_pins() -> dict[str, str]:
    """{distribution: installed version} of the Slicer-shipped distributions this Python has."""
    pins = {}
    for name in SLICER_SHIPPED:
        try:
            pins[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return pins


def pip_arguments(constraints_file, pins: dict[str, str] | None = None) -> list[str]:
    """Write ``constraints_file`` (``name==version`` of ``pins``, by default the installed Slicer-shipped
    distributions) and return the `pip install` arguments of the requirements under those constraints."""
    pins = shipped_pins() if pins is None else pins
    Path(constraints_file).write_text("".join(f"{name}=={version}\n" for name, version in pins.items()),
                                      encoding="utf-8")
    return [*REQUIREMENTS, "--constraint", str(constraints_file)]
