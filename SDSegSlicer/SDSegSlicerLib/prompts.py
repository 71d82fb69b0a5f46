"""Prompts of a segment job (docs/protocol.md, "Prompts"), shared by the module, the headless command and the web
app: lesions clicked as points or drawn as a box become the job's `prompt`; the result's statistics become one line
per lesion, saying where no lesion was found."""

from __future__ import annotations

import numpy as np

DEFAULT_STOP_AFTER_EMPTY = 2  # the worker's default: a direction ends after 2 slices in a row without lesion
WHOLE_VOLUME_WARNING = (
    "Whole-volume mode: every slice is segmented, while the models were trained on ~96-voxel regions around a "
    "lesion and draw lesions where there are none; click the lesion (a point) or draw a box around it instead.")
NO_LESION = "no lesion found at the point"
NO_LESION_IN_BOX = "no lesion found in the box"
NO_LESION_AT_POINT_HINT = "if there is one, click nearer its centre or draw a box around it"
LENGTH_BOUND = "the model's length bound stopped it"
OFF_THE_CLICKED_SLICE = ("nothing on the clicked slice: what was found lies on other slices and may not be the "
                         "clicked lesion; check it, click nearer the lesion's centre or draw a box around it")
LENGTH_BOUND_HINT = "if the lesion goes on, draw a box over its slices"


def prompt_request(lesions: list[dict], stop_after_empty: int = DEFAULT_STOP_AFTER_EMPTY,
                   max_slices: int | None = None, scale: float | None = None) -> dict | None:
    """The job's `prompt` for ``lesions`` (each ``{"point_ijk"|"point_ras"|"box_ijk": ...}``), ``scale`` forcing the
    crop scale of point prompts (None: the worker searches it); None (whole-volume mode) without lesions."""
    if not lesions:
        return None
    request = {"lesions": list(lesions), "stop_after_empty": stop_after_empty, "max_slices": max_slices}
    if scale is not None:
        request["scale"] = scale
    return request


def points_ijk(markups_node, volume_node) -> list[list[float]]:
    """The placed control points of a markups node (world RAS, through any parent transforms) in the volume's
    continuous IJK coordinates. Only points whose position is defined count: not the point that follows the mouse
    while Slicer's place mode is on (PositionPreview), nor points the user unset (PositionUndefined)."""
    from .module_logic import world_to_ijk_matrix  # MRML: not imported by the command line's --help

    world_to_ijk = world_to_ijk_matrix(volume_node)
    points = []
    for n in range(markups_node.GetNumberOfControlPoints()):
        if markups_node.GetNthControlPointPositionStatus(n) != markups_node.PositionDefined:
            continue
        world = [0.0, 0.0, 0.0]
        markups_node.GetNthControlPointPositionWorld(n, world)
        points.append([round(float(v), 4) for v in (world_to_ijk @ np.array([*world, 1.0]))[:3]])
    return points


def lesion_lines(statistics: dict, prompt: dict | None, worker_lesions: list[dict] | None = None) -> list[str]:
    """One line per lesion of a prompt job's result: its consensus volume and slices, or that nothing was found;
    ``worker_lesions`` (the `done` summary's `lesions`) add which directions the lesion's length bound stopped and
    whether what was found misses the clicked slice."""
    if not prompt:
        return []
    lines = []
    for number, (lesion, given) in enumerate(zip(statistics["lesions"], prompt["lesions"]), start=1):
        if lesion["slices"] == 0:
            line = (f"lesion {number}: {NO_LESION_IN_BOX}" if "box_ijk" in given
                    else f"lesion {number}: {NO_LESION} ({NO_LESION_AT_POINT_HINT})")
            lines.append(line)
            continue
        line = f"lesion {number}: {lesion['volume_ml']:.2f} ml on {lesion['slices']} slice(s)"
        worker_lesion = worker_lesions[number - 1] if number <= len(worker_lesions or []) else {}
        bounded = [direction for direction, why in sorted((worker_lesion.get("stops") or {}).items())
                   if why == "length"]
        if bounded:
            line += f"; {LENGTH_BOUND} ({', '.join(bounded)}): {LENGTH_BOUND_HINT}"
        if worker_lesion.get("found_on_clicked_slice") is False:
            line += f"; {OFF_THE_CLICKED_SLICE}"
        lines.append(line)
    return lines
