"""The Slicer module's Qt side (parameter node, widget, logic with the installers, self test): code that runs
only inside the 3D Slicer application. Everything Qt-free lives in SDSegSlicerLib, shared with the web app and the
headless command."""
