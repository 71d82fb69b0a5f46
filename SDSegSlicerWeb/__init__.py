"""SDSegSlicer Web: the SDSegSlicer workflow in a browser on trame-slicer (`sdseg-slicer web`)."""
