"""The end-of-run statistics as the Slicer module computes them: the Dice matrices (matrix products) equal the
pair-by-pair definition, and BackgroundStatistics (masks read a few segments per step, the rest in a thread) gives
exactly what segmentation_statistics gives, on a streamed result in real MRML. (At 256 samples on 96 x 96 x 30
voxels the computation takes seconds: the module runs it off the GUI thread; no timing is asserted here.)"""

from __future__ import annotations

import threading
import time

import numpy as np
import slicer
from slicerlib_testing import accepted_message, oblique_ijk_to_ras, synthetic_result, write_slice_messages

from SDSegSlicerLib import stats
from SDSegSlicerLib.segmentation_writer import StreamedSegmentationWriter

SAMPLES = 20  # more than stats.READ_STEP_SEGMENTS: several read steps


def test_dice_matrix_is_the_pairwise_definition():
    rng = np.random.default_rng(3)
    first = rng.random((5, 3, 7, 6)) < 0.3
    second = rng.random((4, 3, 7, 6)) < 0.5
    first[1] = second[2] = False  # empty masks: 1 with each other, 0 with non-empty ones
    expected = np.array([[stats.dice(a, b) for b in second] for a in first])
    np.testing.assert_allclose(stats.dice_matrix(first, second), expected, rtol=1e-12)
    assert stats.dice_matrix(first, second)[1, 2] == 1.0


def test_background_statistics_equal_the_direct_ones(tmp_path, monkeypatch):
    shape, roi = (6, 14, 16), [2, 1, 1, 14, 12, 5]
    truth = synthetic_result(shape, roi, SAMPLES, seed=4)
    writer = StreamedSegmentationWriter(slicer.vtkMRMLScene(), {**accepted_message(shape, oblique_ijk_to_ras(), 2,
                                                                                   roi), "samples": SAMPLES},
                                        "result", SAMPLES, None)
    for message in write_slice_messages(tmp_path, truth, roi, 2):
        writer.add_slice(message)
    writer.flush()
    direct = stats.segmentation_statistics(writer.segmentation_node, writer.variance_node)

    compute_threads = []
    real = stats.statistics_of_arrays
    monkeypatch.setattr(stats, "statistics_of_arrays",
                        lambda *a: compute_threads.append(threading.current_thread()) or real(*a))
    background = stats.BackgroundStatistics(writer.segmentation_node, writer.variance_node)
    steps = 1
    while not background.step():
        steps += 1
        time.sleep(0.01)
    assert background.result() == direct
    assert steps > 2 and compute_threads and compute_threads[0] is not threading.current_thread()
    samples = truth[0]
    lesion = direct["lesions"][0]
    np.testing.assert_allclose(lesion["dice_between_samples"], stats.dice_matrix(samples, samples), rtol=1e-12)
