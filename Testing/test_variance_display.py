"""The variance overlay on real MRML (slicer-core): the blue-to-magenta colour map, and the slice views' layers, which
it takes only where the user has no layer of their own (a slice view is a vtkMRMLSliceCompositeNode)."""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import vtk

from SDSegSlicerLib import variance_display
from SDSegSlicerLib.segmentation_writer import VARIANCE_ROLE, VARIANCE_ROLE_ATTRIBUTE


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


def add_volume(scene, name="volume"):
    image = vtk.vtkImageData()
    image.SetDimensions(4, 5, 3)
    image.AllocateScalars(vtk.VTK_FLOAT, 1)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetAndObserveImageData(image)
    return node


def add_variance(scene, name="variance"):
    node = add_volume(scene, name)
    node.SetAttribute(VARIANCE_ROLE_ATTRIBUTE, VARIANCE_ROLE)
    return node


def luminance(rgb):
    return 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]


def test_colour_map_is_blue_to_magenta_brighter_with_variance_and_created_once(scene):
    node = variance_display.variance_colour_node(scene)
    assert node.GetName() == variance_display.VARIANCE_COLOUR_NODE_NAME
    assert variance_display.variance_colour_node(scene) is node
    assert scene.GetNodesByClassByName("vtkMRMLColorNode", node.GetName()).GetNumberOfItems() == 1
    transfer = node.GetColorTransferFunction()
    colours = [transfer.GetColor(x) for x in np.linspace(0.0, 1.0, 33)]
    lum = [luminance(rgb) for rgb in colours]
    assert np.all(np.diff(lum) > 0)  # monotonically brighter: readable in grey scale too
    assert lum[0] < 0.1 and lum[-1] > 0.5
    assert all(rgb[2] > rgb[1] + 0.2 for rgb in colours)  # blue over green everywhere: never the consensus yellow
    assert colours[0][2] > colours[0][0] and colours[-1][0] > 0.9 and colours[-1][2] > 0.9  # blue to magenta
    assert variance_display.css_gradient().startswith("linear-gradient(to right, rgb(13, 13, 89) 0%")


def test_variance_display_uses_colour_map_range_and_hides_zero(scene):
    variance = add_variance(scene)
    colour = variance_display.variance_colour_node(scene)
    variance_display.configure_variance_display(variance, colour)
    display = variance.GetDisplayNode()
    assert display.GetColorNodeID() == colour.GetID()
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == pytest.approx((0.0, 0.25))
    assert display.GetApplyThreshold() and display.GetLowerThreshold() > 0.0


@pytest.fixture
def views(scene):
    """Three slice views: one empty, one with the user's own foreground layer, one with an earlier variance."""
    user_layer, earlier = add_volume(scene, "user's PET"), add_variance(scene, "earlier variance")
    composites = [scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(3)]
    composites[1].SetForegroundVolumeID(user_layer.GetID())
    composites[1].SetForegroundOpacity(0.3)
    composites[2].SetForegroundVolumeID(earlier.GetID())
    return composites, user_layer


def test_showing_the_variance_takes_only_empty_or_variance_foregrounds(scene, views):
    composites, user_layer = views
    variance = add_variance(scene)
    variance_display.show_variance_overlay(variance, 0.6)
    assert [c.GetForegroundVolumeID() for c in composites] == [variance.GetID(), user_layer.GetID(),
                                                               variance.GetID()]
    assert [c.GetForegroundOpacity() for c in composites] == pytest.approx([0.6, 0.3, 0.6])


def test_opacity_and_hiding_touch_only_the_views_that_show_the_variance(scene, views):
    composites, user_layer = views
    variance = add_variance(scene)
    variance_display.show_variance_overlay(variance, 0.6)
    variance_display.set_variance_opacity(variance, 0.9)
    assert [c.GetForegroundOpacity() for c in composites] == pytest.approx([0.9, 0.3, 0.9])
    variance_display.hide_variance_overlay(variance)
    assert [c.GetForegroundVolumeID() for c in composites] == [None, user_layer.GetID(), None]
    assert composites[1].GetForegroundOpacity() == pytest.approx(0.3)


def test_background_is_set_only_where_a_view_has_none(scene, views):
    composites, _ = views
    own_background = add_volume(scene, "user's CT")
    composites[0].SetBackgroundVolumeID(own_background.GetID())
    segmented = add_volume(scene, "segmented")
    variance_display.show_as_background_where_empty(segmented)
    assert [c.GetBackgroundVolumeID() for c in composites] == [own_background.GetID(), segmented.GetID(),
                                                               segmented.GetID()]
