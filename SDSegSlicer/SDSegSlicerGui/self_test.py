"""SDSegSlicerTest: the module's self test, run inside Slicer (Reload and Test, or ctest)."""

import os
import shutil
import tempfile
import time

import numpy as np
import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

from SDSegSlicerLib.session import BusyError

from .logic import SDSegSlicerLogic


class SDSegSlicerTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: a real worker on CPU with the bundled default model, on an oblique phantom under a
    rotated parent transform; the flows pytest checks outside Slicer (SDSegSlicerLib on slicer-core), here through
    the module's widget and logic."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentPhantomOnCpu()
        self.setUp()
        self.test_ClickLesion()
        self.setUp()
        self.test_WidgetKeepsResultsAndLayers()
        self.setUp()
        self.test_PreviewPointIsNoLesion()

    def makePhantom(self):
        """Oblique 64x64x6 volume under a rotated, translated parent transform: noisy background with a bright
        ellipse, like a lesion on a CT slice."""
        rng = np.random.default_rng(0)
        k, j, i = np.mgrid[0:6, 0:64, 0:64]
        lesion = ((i - 34) / 11.0) ** 2 + ((j - 30) / 8.0) ** 2 < 1.0
        voxels = (rng.normal(40.0, 10.0, size=lesion.shape) + 80.0 * lesion).astype(np.float32)
        angle = np.radians(20.0)
        rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
        ijkToRas = np.diag([0.8, 0.8, 2.5, 1.0])
        ijkToRas[:3, :3] = rotation @ ijkToRas[:3, :3]
        ijkToRas[:3, 3] = (-20.0, 10.0, 35.0)
        volume = slicer.util.addVolumeFromArray(voxels, ijkToRAS=ijkToRas, name="phantom")
        transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
        parentToWorld = np.eye(4)
        parentToWorld[:3, :3] = rotation.T
        parentToWorld[:3, 3] = (7.0, -4.0, 2.0)
        transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(parentToWorld))
        volume.SetAndObserveTransformNodeID(transform.GetID())
        return volume

    def segmentPhantom(self, logic, volume):
        parameterNode = logic.getParameterNode()
        parameterNode.inputVolume = volume
        parameterNode.samples = 2
        parameterNode.device = "cpu"
        parameterNode.sliceStart = 2
        parameterNode.sliceEnd = 3
        self.runToTheEnd(logic, logic.buildJob(parameterNode), volume)
        logic.finish_run()
        return parameterNode

    def runToTheEnd(self, logic, job, volume):
        run = logic.start_run(job, volume)
        with open(run.job["volume"], "rb") as header:  # the worker's copy is written uncompressed (fast)
            self.assertIn(b"encoding: raw", header.read(1000))
        deadline = time.monotonic() + 600
        while logic.process_run() == "running":
            self.assertLess(time.monotonic(), deadline, "the run did not finish in 10 minutes")
            slicer.app.processEvents()
            time.sleep(0.05)
        self.assertEqual(run.state, "done", run.error_message)
        return run

    def test_SegmentPhantomOnCpu(self):
        from SDSegSlicerLib.segmentation_writer import read_segment_arrays, segment_ids_by_name

        self.delayDisplay("Starting the worker")
        volume = self.makePhantom()
        logic = SDSegSlicerLogic()
        try:
            hello = logic.startWorker("")
            self.assertEqual(hello["protocol"], 2)
            self.assertTrue(hello["models"], "the worker lists no model: the bundled default model is missing")
            with self.assertRaises(BusyError):  # what the GUI could do while it processes events in a wait
                logic.startWorker("", onWait=lambda: logic.startWorker(""))
            hello = logic.startWorker("")

            self.delayDisplay("Segmenting slices 2..3 with 2 samples")
            self.segmentPhantom(logic, volume)
            segmentation = logic.result_segmentation
            self.assertEqual(segmentation.GetTransformNodeID(), volume.GetTransformNodeID())
            byName = segment_ids_by_name(segmentation)
            self.assertEqual(sorted(byName), ["consensus", "sample 1", "sample 2"])
            self.assertEqual(len(logic.sample_segment_ids()), 2)

            variance = logic.result_variance
            self.assertEqual(variance.GetImageData().GetDimensions(), volume.GetImageData().GetDimensions())
            np.testing.assert_allclose(self.ijkToRas(variance), self.ijkToRas(volume), atol=1e-5)
            values = slicer.util.arrayFromVolume(variance)
            self.assertTrue(np.all((values >= 0) & (values <= 0.25 + 1e-6)))
            self.assertEqual(float(values[[0, 1, 4, 5]].max()), 0.0)  # slices outside the range are untouched

            # Read back in the volume's frame (the parent transform applied once): statistics and accept.
            sample1 = read_segment_arrays(segmentation, [byName["sample 1"]])[0][0]
            sampleVoxels = {row["segment"]: row["voxels"] for row in logic.statistics()["segments"]}
            self.assertEqual(sampleVoxels["sample 1"], int(sample1.sum()))
            self.assertEqual(logic.accept_sample(byName["sample 1"]), "accepted")
            self.assertEqual(logic.accept_sample(byName["sample 2"]), "accepted 2")
            accepted = segment_ids_by_name(segmentation)["accepted"]
            np.testing.assert_array_equal(read_segment_arrays(segmentation, [accepted])[0][0], sample1)

            exportDir = tempfile.mkdtemp(prefix="SDSegSlicerTest-")
            try:
                for what in ("segmentation", "nifti", "variance", "stats"):
                    path = logic.export_result(what, exportDir)
                    self.assertGreater(os.path.getsize(path), 0, f"{what} export wrote nothing")
            finally:
                shutil.rmtree(exportDir, ignore_errors=True)
            self.delayDisplay("Test passed")
        finally:
            logic.shutdown()

    def test_ClickLesion(self):
        """A point on the phantom's lesion (under the rotated parent transform): the prompted slice comes first and
        holds a lesion; a point in the background finds none."""
        from SDSegSlicerLib.prompts import NO_LESION, lesion_lines

        volume = self.makePhantom()
        ijkToWorld = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(volume.GetParentTransformNode(), None, ijkToWorld)
        ijkToRas = self.ijkToRas(volume)
        points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "lesion points")
        for ijk in ((34.0, 30.0, 3.0), (5.0, 60.0, 3.0)):  # the lesion's centre; background
            points.AddControlPointWorld(ijkToWorld.TransformPoint((ijkToRas @ [*ijk, 1.0])[:3]))
        logic = SDSegSlicerLogic()
        try:
            logic.startWorker("")
            parameterNode = logic.getParameterNode()
            parameterNode.inputVolume, parameterNode.lesionPoints = volume, points
            parameterNode.samples, parameterNode.device = 2, "cpu"
            # The phantom's lesion is a smooth bright ellipse: `ambiguous`, trained on synthetic lesions, finds it;
            # the general default (`sdseg-union-mr`, trained on real patients) need not.
            parameterNode.model = "ambiguous"
            job = logic.buildJob(parameterNode)
            np.testing.assert_allclose(job["prompt"]["lesions"][0]["point_ijk"], [34, 30, 3], atol=1e-3)
            run = self.runToTheEnd(logic, job, volume)
            lines = lesion_lines(logic.statistics(), run.accepted["prompt"])
            self.assertTrue(lines[0].startswith("lesion 1: ") and NO_LESION not in lines[0], lines)
            self.assertTrue(lines[1].startswith(f"lesion 2: {NO_LESION} ("), lines)
        finally:
            logic.shutdown()

    @staticmethod
    def ijkToRas(volume):
        matrix = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(matrix)
        return slicer.util.arrayFromVTKMatrix(matrix)

    def test_WidgetKeepsResultsAndLayers(self):
        """A bad slice range keeps the result on screen; parameter changes leave the user's slice layers alone;
        the backend status follows the interpreter field's text."""
        slicer.util.selectModule("SDSegSlicer")
        widget = slicer.modules.sdsegslicer.widgetRepresentation().self()
        volume = self.makePhantom()
        widget.logic.startWorker("")
        parameterNode = self.segmentPhantom(widget.logic, volume)
        widget.showResults()
        result = widget.logic.result_segmentation

        userLayer = slicer.util.addVolumeFromArray(np.zeros((2, 3, 4), np.float32), name="user layer")
        composite = slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode")[0]
        composite.SetForegroundVolumeID(userLayer.GetID())
        composite.SetForegroundOpacity(0.3)
        parameterNode.seed = 7  # any parameter change
        parameterNode.varianceOpacity = 0.9  # an opacity change touches only the views showing the variance
        self.assertEqual(composite.GetForegroundVolumeID(), userLayer.GetID())
        self.assertAlmostEqual(composite.GetForegroundOpacity(), 0.3)

        parameterNode.sliceStart, parameterNode.sliceEnd = 5, 1
        widget.onSegmentOrCancel()
        self.assertIn("Slice range", widget.ui.statusLabel.text)
        self.assertIs(widget.logic.result_segmentation, result)
        self.assertTrue(widget.ui.resultsCollapsibleButton.enabled)

        widget.ui.pythonExecutableLineEdit.text = "/opt/other/python"
        self.assertEqual(widget.ui.backendStatusLabel.text, "The worker runs in the Python interpreter above.")
        widget.ui.pythonExecutableLineEdit.text = ""
        self.assertNotEqual(widget.ui.backendStatusLabel.text, "The worker runs in the Python interpreter above.")
        widget.logic.shutdown()

    def test_PreviewPointIsNoLesion(self):
        """Place mode's preview point (the one under the mouse) and a point the user unset are no lesions."""
        slicer.util.selectModule("SDSegSlicer")
        widget = slicer.modules.sdsegslicer.widgetRepresentation().self()
        volume = self.makePhantom()
        parameterNode = widget.logic.getParameterNode()
        parameterNode.inputVolume = volume
        points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "lesion points")
        parameterNode.lesionPoints = points
        bounds = [0.0] * 6
        volume.GetRASBounds(bounds)
        center = [(bounds[2 * a] + bounds[2 * a + 1]) / 2.0 for a in range(3)]
        for status in (points.PositionDefined, points.PositionPreview, points.PositionUndefined):
            index = points.AddControlPointWorld(center)
            points.SetNthControlPointPositionOrientationWorld(index, center, [1, 0, 0, 0, 1, 0, 0, 0, 1], "", status)
        widget.updateButtons()
        self.assertTrue(widget.ui.modeLabel.text.startswith("Segments 1 lesion(s)"), widget.ui.modeLabel.text)
        self.assertEqual(len(widget.logic.buildJob(parameterNode)["prompt"]["lesions"]), 1)
