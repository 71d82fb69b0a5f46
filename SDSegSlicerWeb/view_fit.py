"""Slice views that always show their whole slice: fitted to the volume whenever the browser gives them a size (a new
page, a resized window) and by their Reset Camera button, without moving to another slice.

trame-slicer fits a slice view once, when the volume is shown; a view whose browser size arrives later (a page that
lays itself out after the first image, a loaded machine) keeps the field of view of its old size and opens zoomed in.
Its fit also moves every view to the middle slice (Slicer's FitSliceToBackground centres the volume): here the slice
the user was on is kept; a new volume opens at its middle slice.
"""

from __future__ import annotations

from vtkmodules.vtkCommonCore import vtkCommand


def keep_slices_fitted(slice_views) -> None:
    """Make each of ``slice_views`` (trame-slicer SliceViews) fit its slice on every resize and on Reset Camera, keeping
    the slice it shows while it shows the same volume."""
    for view in slice_views:
        fit = view.fit_view_to_content  # trame-slicer's fit (centres the slice)
        fitted_volume = {"id": None}

        def fit_keeping_slice(view=view, fit=fit, fitted_volume=fitted_volume) -> None:
            offset, volume = view.get_slice_value(), view.get_background_volume_id()
            fit()
            if volume is not None and volume == fitted_volume["id"]:
                view.set_slice_value(offset)
            fitted_volume["id"] = volume

        view.fit_view_to_content = fit_keeping_slice  # what its reset_view (the Reset Camera button) calls
        view.interactor().AddObserver(vtkCommand.WindowResizeEvent, lambda *_, fit=fit_keeping_slice: fit())
