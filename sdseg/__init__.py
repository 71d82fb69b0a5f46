"""SDSegSlicer backend: diffusion-model segmentation with uncertainty (no Slicer imports)."""

__version__ = "0.1.0"
