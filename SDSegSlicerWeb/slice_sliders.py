"""Slice sliders that show the slice their view shows, however fast the user moves them.

trame-slicer answers each value a slice slider sends by setting the slider to its view's slice offset. Slicer moves a
slice by the difference to its current offset, so once a fit has left that offset a hair off the grid (2.1e-14 mm
for 0), the answer differs from the value sent in its last digits (13.000000000000016 for 13) and trame pushes it
back to the page. When the user has pressed on (arrow keys, faster than a loaded server answers), that late answer
moves the thumb back to an earlier slice while the view shows the last one. Here, in the same state flush, an answer
within SAME_OFFSET_MM of the value the page sent is replaced by that value, so trame pushes nothing; an answer
farther from it would still go back (none is seen: Slicer takes the offset it is given, neither snapped nor clamped).
"""

from __future__ import annotations

from trame_slicer.app.logic.slice_view_logic import get_view_slider_typed_state

SAME_OFFSET_MM = 1e-6  # offsets closer than this are one slice: floating-point noise, far below any slice spacing


def keep_slider_on_the_page_value(server, view) -> None:
    """When the page moves the slice slider of ``view`` (a trame-slicer SliceView), keep the value it sent if the
    view's offset differs from it by floating-point noise only. Call after trame-slicer binds the slider (its view
    gutter): trame runs a key's change listeners in the order they were added, so this one runs after
    trame-slicer's has moved the view and set its answer, before the flush pushes that answer."""
    slider = get_view_slider_typed_state(server, view)
    key = slider.name.value

    def keep_page_value(**state) -> None:
        sent = state[key]  # the value the page sent: the state trame has pushed, not the answer pending
        if sent is not None and abs(view.get_slice_value() - sent) < SAME_OFFSET_MM:
            with slider.suppress_change_listeners():
                slider.data.value = sent  # equal to what was pushed: the pending answer is dropped

    server.state.change(key)(keep_page_value)
