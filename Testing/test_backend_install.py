"""SDSegSlicerLib.backend_install: what the module needs in 3D Slicer's Python, found without importing it; the
status line computed from the interpreter field's own text; and pip resolutions under the constraints of what
Slicer ships, for Slicer 5.8 (Python 3.9) and 5.10 (Python 3.12), that never replace a shipped distribution
(pip resolves against PyPI, as the module's installer does)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from slicerlib_testing import CLI_TIMEOUT_S

import SDSegSlicerLib
from SDSegSlicerLib import backend_install

# SuperBuild/External_python-*.cmake at v5.8.0 and v5.10.0: the versions Slicer's Python has (pip, setuptools and
# wheel left out: pip does not resolve them for a requirement set).
SLICER_RELEASES = {
    "5.8 (Python 3.9)": ("3.9", {
        "Deprecated": "1.2.14", "GitPython": "3.1.43", "PyGithub": "2.3.0", "PyJWT": "2.8.0", "PyNaCl": "1.5.0",
        "certifi": "2024.2.2", "cffi": "1.16.0", "chardet": "5.2.0", "charset-normalizer": "3.3.2", "CouchDB": "1.2",
        "cryptography": "42.0.7", "dicomweb-client": "0.59.1", "gitdb": "4.0.11", "idna": "3.7", "numpy": "1.26.4",
        "packaging": "24.0", "Pillow": "10.3.0", "pycparser": "2.22", "pydicom": "2.4.4", "pyparsing": "3.1.2",
        "python-dateutil": "2.9.0.post0", "requests": "2.32.3", "retrying": "1.3.4", "scipy": "1.13.1",
        "six": "1.16.0", "smmap": "5.0.1", "typing-extensions": "4.12.1", "urllib3": "2.2.1", "wrapt": "1.16.0"}),
    "5.10 (Python 3.12)": ("3.12", {
        "Deprecated": "1.2.18", "GitPython": "3.1.44", "PyGithub": "2.6.1", "PyJWT": "2.10.1", "PyNaCl": "1.5.0",
        "certifi": "2025.4.26", "cffi": "1.17.1", "chardet": "5.2.0", "charset-normalizer": "3.4.2",
        "CouchDB": "1.2", "cryptography": "45.0.3", "dicomweb-client": "0.60.0", "gitdb": "4.0.12", "idna": "3.10",
        "numpy": "2.0.2", "packaging": "25.0", "Pillow": "11.2.1", "pycparser": "2.22", "pydicom": "2.4.4",
        "pyparsing": "3.2.3", "python-dateutil": "2.9.0.post0", "requests": "2.32.3", "retrying": "1.3.4",
        "scipy": "1.13.1", "six": "1.17.0", "smmap": "5.0.2", "typing-extensions": "4.14.0", "urllib3": "2.4.0",
        "wrapt": "1.17.2"}),
}


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def test_every_pinned_release_distribution_is_a_shipped_one():
    shipped = {canonical(name) for name in backend_install.SLICER_SHIPPED}
    for _, pins in SLICER_RELEASES.values():
        assert {canonical(name) for name in pins} <= shipped


def test_install_pins_every_shipped_distribution_this_python_has(tmp_path):
    import numpy
    import SimpleITK

    constraints = tmp_path / "constraints.txt"
    arguments = backend_install.pip_arguments(constraints)
    assert arguments[-2:] == ["--constraint", str(constraints)]
    pins = constraints.read_text().split()
    assert f"numpy=={numpy.__version__}" in pins and f"SimpleITK=={SimpleITK.__version__}" in pins
    shipped = {canonical(name) for name in backend_install.SLICER_SHIPPED}
    requirement_names = {canonical(a.split(">")[0].split("=")[0]) for a in arguments[:-2]}
    assert requirement_names == {"diffusers", "safetensors", "tqdm", "highdicom"}
    assert not requirement_names & shipped  # torch comes from the PyTorch extension's installer


@pytest.mark.parametrize("release", list(SLICER_RELEASES))
def test_install_resolves_without_replacing_what_slicer_ships(release, tmp_path):
    python, pins = SLICER_RELEASES[release]
    arguments = backend_install.pip_arguments(tmp_path / "constraints.txt", pins)
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report",
         str(report), "--target", str(tmp_path / "target"), "--python-version", python, "--only-binary=:all:",
         "--platform", "manylinux2014_x86_64", "--implementation", "cp", *arguments],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    chosen = {canonical(item["metadata"]["name"]): item["metadata"]["version"]
              for item in json.loads(report.read_text())["install"]}
    for name, version in pins.items():
        assert chosen.get(canonical(name), version) == version, f"{name} would change from {version}"
    assert chosen["pydicom"] == "2.4.4" and chosen["highdicom"].startswith("0.22.")  # the last for pydicom 2
    assert {"diffusers", "safetensors", "tqdm"} <= chosen.keys()


def test_missing_modules_are_found_without_importing(monkeypatch):
    diffusers_was_imported = "diffusers" in sys.modules
    assert backend_install.missing_modules() == []  # this environment has everything
    assert ("diffusers" in sys.modules) == diffusers_was_imported
    monkeypatch.setattr(backend_install, "WORKER_MODULES", ("numpy", "sdseg_no_such_module"))
    monkeypatch.setattr(backend_install, "DICOM_SEG_MODULE", "highdicom_no_such_module")
    assert backend_install.missing_modules() == ["sdseg_no_such_module", "highdicom_no_such_module"]


def test_status_comes_from_the_interpreter_text_it_is_given(monkeypatch):
    """The field's textChanged arrives before the parameter node has the new text (PythonQt calls handlers in
    connection order), so the status must be computed from the text the signal carries."""
    assert backend_install.status("/opt/conda/bin/python") == (
        "The worker runs in the Python interpreter above.", False)
    assert backend_install.status("") == ("Backend installed in Slicer's Python.", False)
    monkeypatch.setattr(backend_install, "DICOM_SEG_MODULE", "highdicom_no_such_module")
    text, install = backend_install.status("  ")
    assert install and "DICOM SEG export needs highdicom" in text
    monkeypatch.setattr(backend_install, "WORKER_MODULES", ("torch", "diffusers_no_such_module"))
    text, install = backend_install.status("")
    assert install and text.startswith("Missing in Slicer's Python: diffusers_no_such_module, ")
    assert backend_install.status("", "https://gpu.example.org") == ("The worker runs on the server above.", False)


# Slicer's Python with "Additional module paths = SDSegSlicer/": only the module's folder is on sys.path (no
# editable install, no repository root); `sdseg` is not importable there, but the worker gets backend_root().
SLICER_SYS_PATH = r"""
import importlib.util, sys
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path[:] = [sys.argv[1]] + [p for p in sys.path if p.endswith(("site-packages", ".zip")) or "lib/python" in p]
assert importlib.util.find_spec("sdseg") is None, "sdseg must not be importable in this simulated Slicer Python"
from SDSegSlicerLib import backend_install
print("MISSING", backend_install.missing_modules())
backend_install.backend_root = lambda: None  # an extension installed without the backend beside it
print("WITHOUT BACKEND FOLDER", backend_install.missing_modules())
"""


def test_backend_beside_the_module_folder_counts_as_installed(tmp_path):
    module_dir = Path(SDSegSlicerLib.__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", SLICER_SYS_PATH, str(module_dir)], capture_output=True, text=True,
                            cwd=tmp_path, timeout=CLI_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "MISSING []" in result.stdout
    assert "WITHOUT BACKEND FOLDER ['sdseg']" in result.stdout
