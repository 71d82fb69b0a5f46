"""SDSegSlicer's MRML side (numpy + 3D Slicer MRML, never torch): the worker client, the streamed segmentation
writer, runs, statistics, exports, previews and the headless `sdseg-slicer` command."""

__version__ = "0.1.0"
