"""Slice sliders that show the slice their view shows, however fast the user moves them.

trame-slicer answers each value a slice slider sends by setting the slider to its view's slice offset. Slicer moves a
slice by the difference to its current offset, so once a fit has left that offset a hair off the grid (2.1e-14 mm
for 0), the answer differs from the value sent in its last digits (13.000000000000016 for 13) and trame pushes it
back to the page. When the user has pressed on (arrow keys, faster than a loaded server answers), that late answer
moves the thumb back to an earlier slice while the view shows the last one. Here an answer within SAME_OFFSET_MM of
the value the page holds is replaced by that value, so trame pushes nothing; a real correction still goes back.
"""

from __future__ import annotations

from trame_slicer.app.logic.slice_view_logic import get_view_slider_typed_state

SAME_OFFSET_MM = 1e-6  # offsets closer than this are one slice: floating-point noise, far below any slice spacing


def keep_slider_on_the_page_value(server, view) -> None:
    """Keep the value the page holds for the slice slider of ``view`` (a trame-slicer SliceView) when the view's offset
    differs from it by floating-point noise only. Call after trame-slicer connects the slider (its view gutter), so
    that this runs after trame-slicer's own update of the slider."""
    slider = get_view_slider_typed_state(server, view)
    key = slider.name.value

    def keep_page_value(_view) -> None:
        page_value = server.state.to_dict().get(key)  # the value last sent by, or pushed to, the page
        if page_value is not None and abs(view.get_slice_value() - page_value) < SAME_OFFSET_MM:
            with slider.suppress_change_listeners():
                slider.data.value = page_value  # equal to what trame pushed last: nothing left to push

    view.modified.connect(keep_page_value)
