"""Streamed slices of a worker job -> a vtkMRMLSegmentationNode (segments `consensus`, `sample 1..N`) and a float32
`variance` scalar volume with the input volume's geometry; and the way back, segments -> numpy arrays.

Only MRML calls that exist both in 3D Slicer and in the slicer-core wheel are used (no slicer.app, no
slicer.modules, no slicer.util helpers that need them).
"""

from __future__ import annotations

import colorsys
import json
import logging

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

CONSENSUS_SEGMENT_NAME = "consensus"
CONSENSUS_COLOUR = (1.0, 0.85, 0.1)
# Hue of the first sample (blue), away from the consensus yellow.
SAMPLE_HUE_OFFSET = 0.58
# Largest difference between the worker's IJK-to-RAS matrix and the reference volume's (mm; rotation terms).
GEOMETRY_TOLERANCE = 1e-3
LABELMAP_REPRESENTATION = "Binary labelmap"

log = logging.getLogger(__name__)
_converter_rules_checked = False  # ensure_converter_rules() looks once per process
# Node attribute marking the variance volumes this writer makes (the overlay only replaces those).
VARIANCE_ROLE_ATTRIBUTE = "SDSegSlicer.Role"
VARIANCE_ROLE = "variance"
# Segmentation node attributes: the job's prompt (JSON, as the worker accepted it: a saved scene can be re-run)
# and the IJK axis the slices were cut along.
PROMPT_ATTRIBUTE = "SDSegSlicer.Prompt"
SLICE_AXIS_ATTRIBUTE = "SDSegSlicer.SliceAxis"


def sample_segment_name(number: int) -> str:
    return f"sample {number}"


def sample_colours(count: int) -> list[tuple[float, float, float]]:
    """`count` distinct RGB colours: hues evenly spread around the colour wheel, starting at blue."""
    return [colorsys.hsv_to_rgb((SAMPLE_HUE_OFFSET + index / max(count, 1)) % 1.0, 0.85, 0.95)
            for index in range(count)]


def ensure_converter_rules() -> None:
    """Register the labelmap <-> surface converter rules once per process (3D Slicer does this at startup,
    slicer-core does not). A VTK build whose factory cannot list its rules from Python is reported once in the log;
    inside the Slicer application the rules it registered at startup are then relied on, elsewhere they are
    registered without looking."""
    global _converter_rules_checked
    if _converter_rules_checked:
        return
    _converter_rules_checked = True
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    try:
        registered = {rule.GetClassName() for rule in factory.GetConverterRules()}
    except (TypeError, AttributeError) as error:
        in_slicer = getattr(slicer, "app", None) is not None
        log.warning("cannot list the segmentation converter rules from Python (%s); %s", error,
                    "using the ones 3D Slicer registered at startup" if in_slicer else "registering them")
        if in_slicer:
            return
        registered = set()
    for rule_class in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule,
                       slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule):
        if rule_class.__name__ not in registered:
            factory.RegisterConverterRule(rule_class())


def vtk_matrix(array) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            matrix.SetElement(row, column, float(array[row][column]))
    return matrix


def numpy_matrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def volume_ijk_to_ras(volume_node) -> np.ndarray:
    """The volume's own IJK-to-RAS matrix (parent transforms not applied)."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return numpy_matrix(matrix)


def unique_node_name(scene, base_name: str) -> str:
    """base_name if no node in the scene has it, else 'base_name 2', 'base_name 3', ..."""
    name, number = base_name, 1
    while scene.GetFirstNodeByName(name) is not None:
        number += 1
        name = f"{base_name} {number}"
    return name


def labelmap_image(array_kji: np.ndarray, ijk_to_ras: np.ndarray, start_ijk) -> slicer.vtkOrientedImageData:
    """uint8 oriented image holding array_kji (K, J, I), its first voxel at IJK start_ijk of the geometry."""
    image = slicer.vtkOrientedImageData()
    image.SetImageToWorldMatrix(vtk_matrix(ijk_to_ras))
    k_size, j_size, i_size = array_kji.shape
    i0, j0, k0 = (int(v) for v in start_ijk)
    image.SetExtent(i0, i0 + i_size - 1, j0, j0 + j_size - 1, k0, k0 + k_size - 1)
    scalars = numpy_support.numpy_to_vtk(
        np.ascontiguousarray(array_kji, dtype=np.uint8).ravel(), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR)
    image.GetPointData().SetScalars(scalars)
    return image


def image_array_kji(image) -> np.ndarray:
    """(K, J, I) numpy view of a single-component vtkImageData's scalars."""
    i_size, j_size, k_size = image.GetDimensions()
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(k_size, j_size, i_size)


def reference_geometry(segmentation_node):
    """(ijk_to_ras (4, 4), extent [i0, i1, j0, j1, k0, k1] inclusive) of the segmentation's reference geometry."""
    segmentation = segmentation_node.GetSegmentation()
    geometry = segmentation.GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    if not geometry:
        raise ValueError(f"Segmentation '{segmentation_node.GetName()}' has no reference geometry: "
                         "set its source geometry (Segment Editor) to a volume first.")
    image = slicer.vtkOrientedImageData()
    slicer.vtkSegmentationConverter.DeserializeImageGeometry(geometry, image, False)
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    return numpy_matrix(matrix), list(image.GetExtent())


def segment_labelmap(segmentation_node, segment_id) -> slicer.vtkOrientedImageData:
    """The segment's binary labelmap in the segmentation's own frame, like its reference geometry: the parent
    transform is NOT applied (GetSegmentBinaryLabelmapRepresentation applies it by default, which would move the
    voxels of a result on a transformed volume a second time)."""
    labelmap = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
        segmentation_node, segment_id, labelmap, False)
    return labelmap


def read_segment_arrays(segmentation_node, segment_ids, full_extent: bool = True):
    """The segments as one boolean array (S, K, J, I) on the segmentation's reference grid.

    full_extent=True: the whole reference geometry (the input volume). False: only the union of the segments'
    non-empty extents (small for an ROI run). Returns (arrays, extent [i0, i1, j0, j1, k0, k1] inclusive,
    ijk_to_ras); an empty union gives arrays with zero-size axes.
    """
    ijk_to_ras, reference_extent = reference_geometry(segmentation_node)
    extent = reference_extent
    if not full_extent:
        ids = vtk.vtkStringArray()
        for segment_id in segment_ids:
            ids.InsertNextValue(segment_id)
        union_geometry = segmentation_node.GetSegmentation().DetermineCommonLabelmapGeometry(
            slicer.vtkSegmentation.EXTENT_UNION_OF_EFFECTIVE_SEGMENTS, ids)
        union = slicer.vtkOrientedImageData()  # extent (0, -1, ...): empty unless the union has voxels
        if union_geometry:
            slicer.vtkSegmentationConverter.DeserializeImageGeometry(union_geometry, union, False)
        extent = list(union.GetExtent())
    shape_kji = tuple(max(extent[2 * a + 1] - extent[2 * a] + 1, 0) for a in (2, 1, 0))
    arrays = np.zeros((len(segment_ids), *shape_kji), dtype=bool)
    if 0 in shape_kji:
        return arrays, extent, ijk_to_ras
    grid = slicer.vtkOrientedImageData()
    grid.SetImageToWorldMatrix(vtk_matrix(ijk_to_ras))
    grid.SetExtent(*extent)
    for index, segment_id in enumerate(segment_ids):
        labelmap = segment_labelmap(segmentation_node, segment_id)
        if labelmap.IsEmpty():
            continue
        resampled = slicer.vtkOrientedImageData()
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(labelmap, grid, resampled)
        # Segments that do not overlap share one labelmap layer, each with its own label value.
        label = segmentation_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
        arrays[index] = image_array_kji(resampled) == label
    return arrays, extent, ijk_to_ras


def segment_ids_by_name(segmentation_node) -> dict[str, str]:
    segmentation = segmentation_node.GetSegmentation()
    return {segmentation.GetNthSegment(n).GetName(): segmentation.GetNthSegmentID(n)
            for n in range(segmentation.GetNumberOfSegments())}


class StreamedSegmentationWriter:
    """Creates the result nodes of one job from its `accepted` message and fills them slice by slice.

    A whole-ROI job gives segments `consensus`, `sample 1..N`; a prompt job with several lesions gives
    `lesion L consensus`, `lesion L sample 1..N` for each (one lesion: the plain names). Each slice's arrays cover
    its `box_ijk` (prompt jobs) or the ROI. add_slice() only reads the slice file and keeps it; flush() pushes what
    arrived since the last flush into MRML as one slab per segment, so calling flush() from a timer costs nothing
    while no slice arrives.
    """

    def __init__(self, scene, accepted_msg: dict, name: str, num_samples: int, reference_volume_node=None):
        volume = accepted_msg["volume"]
        self.shape_kji = tuple(int(v) for v in volume["shape_kji"])
        self.slice_axis = int(volume["slice_axis"])
        self.roi_ijk = [int(v) for v in volume["roi_ijk"]]
        self.num_samples = int(num_samples)
        self.prompt = accepted_msg.get("prompt")
        self.num_lesions = len(self.prompt["lesions"]) if self.prompt else 1
        self.slices_received = 0
        self._check_job_geometry()
        self.ijk_to_ras = np.asarray(volume["ijk_to_ras"], dtype=float)
        if reference_volume_node is not None:
            self.ijk_to_ras = self._reference_ijk_to_ras(reference_volume_node)
        self._pending: dict[tuple[int, int], tuple[list[int], np.ndarray]] = {}
        self._variance_modified = False

        ensure_converter_rules()
        self.segmentation_node = self._create_segmentation_node(scene, unique_node_name(scene, name))
        self.variance_node = self._create_variance_node(scene, unique_node_name(scene, f"{name} variance"))
        self._variance = image_array_kji(self.variance_node.GetImageData())
        if reference_volume_node is not None:
            transform_id = reference_volume_node.GetTransformNodeID()
            self.segmentation_node.SetAndObserveTransformNodeID(transform_id)
            self.variance_node.SetAndObserveTransformNodeID(transform_id)
            self.segmentation_node.SetNodeReferenceID(
                self.segmentation_node.GetReferenceImageGeometryReferenceRole(), reference_volume_node.GetID())

    # --- geometry -----------------------------------------------------------------------------------------------

    def _check_job_geometry(self):
        if len(self.shape_kji) != 3 or min(self.shape_kji) < 1:
            raise ValueError(f"The worker reported a volume of shape {self.shape_kji}: a 3D volume is needed.")
        if self.slice_axis not in (0, 1, 2):
            raise ValueError(f"The worker reported slice axis {self.slice_axis}: it must be 0, 1 or 2.")
        if not self._inside(self.roi_ijk, [0, 0, 0, *self.shape_kji[::-1]]):
            raise ValueError(f"The worker reported ROI {self.roi_ijk} outside the volume of IJK size "
                             f"{self.shape_kji[::-1]}.")
        if self.num_samples < 1:
            raise ValueError("At least one sample is needed.")

    @staticmethod
    def _inside(box, outer) -> bool:
        return all(outer[a] <= box[a] < box[a + 3] <= outer[a + 3] for a in range(3))

    def _reference_ijk_to_ras(self, volume_node) -> np.ndarray:
        image = volume_node.GetImageData()
        dims_ijk = tuple(image.GetDimensions()) if image is not None else None
        if dims_ijk != self.shape_kji[::-1]:
            raise ValueError(f"The worker read a volume of IJK size {self.shape_kji[::-1]} but "
                             f"'{volume_node.GetName()}' has size {dims_ijk}: segment the volume again.")
        ijk_to_ras = volume_ijk_to_ras(volume_node)
        if not np.allclose(ijk_to_ras, self.ijk_to_ras, atol=GEOMETRY_TOLERANCE):
            raise ValueError(f"The worker read a volume whose position or orientation differs from "
                             f"'{volume_node.GetName()}': segment the volume again.")
        return ijk_to_ras

    def _slice_box(self, slice_msg: dict) -> list[int]:
        """The IJK box [i0, j0, k0, i1, j1, k1] a slice's arrays cover (checked: one slice, inside the ROI)."""
        index = int(slice_msg["index"])
        if slice_msg.get("box_ijk") is None:
            box = list(self.roi_ijk)
            box[self.slice_axis], box[self.slice_axis + 3] = index, index + 1
        else:
            box = [int(v) for v in slice_msg["box_ijk"]]
        if (len(box) != 6 or (box[self.slice_axis], box[self.slice_axis + 3]) != (index, index + 1)
                or not self._inside(box, self.roi_ijk)):
            raise ValueError(f"The worker sent slice {index} covering {box}, not one slice inside the ROI "
                             f"{self.roi_ijk}.")
        return box

    def _plane_shape(self, box) -> tuple[int, int]:
        """(A, B) of one slice's arrays: the box's size on the two remaining axes, in K, J, I order."""
        sizes_kji = [box[a + 3] - box[a] for a in (2, 1, 0)]
        del sizes_kji[2 - self.slice_axis]
        return tuple(sizes_kji)

    def _plane_index(self, box):
        """numpy index of one slice's box in a (K, J, I) array of the whole volume (the slice axis dropped)."""
        return tuple(box[2 - kji_axis] if 2 - kji_axis == self.slice_axis
                     else slice(box[2 - kji_axis], box[5 - kji_axis]) for kji_axis in range(3))

    # --- nodes ----------------------------------------------------------------------------------------------------

    def segment_names(self, lesion: int) -> list[str]:
        """Names of a lesion's segments: consensus, then the samples (prefixed `lesion L ` when there are several)."""
        prefix = f"lesion {lesion + 1} " if self.num_lesions > 1 else ""
        return [prefix + CONSENSUS_SEGMENT_NAME] + [prefix + sample_segment_name(n + 1)
                                                    for n in range(self.num_samples)]

    def _create_segmentation_node(self, scene, name):
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        node.SetName(name)
        segmentation = node.GetSegmentation()
        segmentation.SetSourceRepresentationName(LABELMAP_REPRESENTATION)
        dims_ijk = self.shape_kji[::-1]
        segmentation.SetConversionParameter(
            slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
            slicer.vtkSegmentationConverter.SerializeImageGeometry(
                vtk_matrix(self.ijk_to_ras), [0, dims_ijk[0] - 1, 0, dims_ijk[1] - 1, 0, dims_ijk[2] - 1]))
        colours = [CONSENSUS_COLOUR] + sample_colours(self.num_samples)
        self.segment_ids = [[segmentation.AddEmptySegment("", segment_name, colour)
                             for segment_name, colour in zip(self.segment_names(lesion), colours)]
                            for lesion in range(self.num_lesions)]
        # One labelmap layer per segment, with label value 1: slabs merged (maximum) into a layer shared by
        # several segments, or into a layer with another label value, would mix the segments up.
        for segment_id in (segment_id for ids in self.segment_ids for segment_id in ids):
            segmentation.SeparateSegmentLabelmap(segment_id)
            segmentation.GetSegment(segment_id).SetLabelValue(1)
        node.SetAttribute(SLICE_AXIS_ATTRIBUTE, str(self.slice_axis))
        if self.prompt:
            node.SetAttribute(PROMPT_ATTRIBUTE, json.dumps(self.prompt))
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        for ids in self.segment_ids:
            for segment_id in ids[1:]:
                display.SetSegmentVisibility(segment_id, False)
        return node

    def _create_variance_node(self, scene, name):
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        node.SetName(name)
        node.SetAttribute(VARIANCE_ROLE_ATTRIBUTE, VARIANCE_ROLE)
        node.SetIJKToRASMatrix(vtk_matrix(self.ijk_to_ras))
        image = vtk.vtkImageData()
        image.SetDimensions(*self.shape_kji[::-1])
        image.AllocateScalars(vtk.VTK_FLOAT, 1)
        image.GetPointData().GetScalars().Fill(0.0)
        node.SetAndObserveImageData(image)
        node.CreateDefaultDisplayNodes()
        return node

    # --- streaming --------------------------------------------------------------------------------------------------

    def add_slice(self, slice_msg: dict) -> None:
        """Read one `slice` message's npz file and keep its arrays until the next flush()."""
        lesion = slice_msg.get("lesion")
        lesion = 0 if lesion is None else int(lesion)
        if not 0 <= lesion < self.num_lesions:
            raise ValueError(f"The worker sent a slice of lesion {lesion + 1}; the job has {self.num_lesions}.")
        box = self._slice_box(slice_msg)
        samples, consensus, variance = self._read_slice_file(slice_msg["file"], self._plane_shape(box))
        self._pending[(lesion, int(slice_msg["index"]))] = (box, np.concatenate([consensus[None], samples]) > 0)
        plane = self._plane_index(box)
        self._variance[plane] = np.maximum(self._variance[plane], variance)  # lesions' crops may overlap
        self._variance_modified = True
        self.slices_received += 1

    def _read_slice_file(self, path, plane):
        try:
            with np.load(path, allow_pickle=False) as data:
                samples, consensus, variance = data["samples"], data["consensus"], data["variance"]
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f"Cannot read the slice file {path} sent by the worker ({error}).") from None
        expected = {"samples": (self.num_samples, *plane), "consensus": plane, "variance": plane}
        for key, array in (("samples", samples), ("consensus", consensus), ("variance", variance)):
            if array.shape != expected[key]:
                raise ValueError(f"The worker sent '{key}' of shape {array.shape} in {path}; "
                                 f"expected {expected[key]} for this slice's box and slice axis.")
        return samples, consensus, variance.astype(np.float32)

    def flush(self) -> bool:
        """Push the slices that arrived since the last flush into the segments and the variance volume.
        Returns whether anything was pushed."""
        if not self._pending and not self._variance_modified:
            return False
        if self._pending:
            self._push_segments()
        if self._variance_modified:
            image = self.variance_node.GetImageData()
            image.GetPointData().GetScalars().Modified()
            image.Modified()
            self.variance_node.Modified()
            self._variance_modified = False
        return True

    def _push_segments(self):
        was_modifying = self.segmentation_node.StartModify()
        for lesion in range(self.num_lesions):
            slices = [value for (slice_lesion, _), value in self._pending.items() if slice_lesion == lesion]
            if not slices:
                continue
            boxes = np.array([box for box, _ in slices])
            start_ijk, end_ijk = boxes[:, :3].min(axis=0), boxes[:, 3:].max(axis=0)
            slab = np.zeros((self.num_samples + 1, *(end_ijk - start_ijk)[::-1]), dtype=np.uint8)
            for box, labels in slices:
                slab[(slice(None), *(slice(box[a] - start_ijk[a], box[a + 3] - start_ijk[a]) for a in (2, 1, 0)))] = \
                    np.expand_dims(labels, 1 + (2 - self.slice_axis))
            for segment_id, segment_slab in zip(self.segment_ids[lesion], slab):
                # Slices arrive once each, so merging (maximum) with what is there only adds the new slab.
                slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                    labelmap_image(segment_slab, self.ijk_to_ras, start_ijk), self.segmentation_node, segment_id,
                    slicer.vtkSlicerSegmentationsModuleLogic.MODE_MERGE_MAX)
        self._pending.clear()
        self.segmentation_node.EndModify(was_modifying)
