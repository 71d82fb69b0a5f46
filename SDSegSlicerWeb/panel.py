"""The page: trame-slicer's viewer layout (views, tool bar, drawer) with the SDSeg panel and trame-slicer's segment
editor in the drawer. Element ids (``sdseg-...``) are what the browser tests click and read."""

from __future__ import annotations

from types import SimpleNamespace

from trame.widgets import html
from trame.widgets.vuetify3 import (
    VBtn,
    VBtnToggle,
    VCheckbox,
    VDivider,
    VFileInput,
    VProgressLinear,
    VSelect,
    VSlider,
    VTable,
    VTextField,
    VTooltip,
)
from trame_slicer.app.ui import SegmentEditorUI, ViewerLayout
from trame_slicer.app.ui.control_button import ControlButton

from SDSegSlicerLib import variance_display
from SDSegSlicerLib.run import DEVICES, MAX_SAMPLES
from SDSegSlicerLib.segmentation_writer import CONSENSUS_COLOUR
from SDSegSlicerLib.variance_display import VARIANCE_DISPLAY_RANGE

PANEL_TOOL = "SDSegPanel"
EDITOR_TOOL = SegmentEditorUI.__name__
UPLOAD_TYPES = ".nrrd,.nhdr,.nii,.nii.gz,.gz,.mha,.mhd"  # what the file picker offers (a .gz: Chrome's .nii.gz)
DICOM_ONLY = "DICOM SEG: only for a volume loaded from a DICOM series folder."
# The run's fields (state sdseg_<name>) as the page shows them when Segment is clicked, sent with the click: a value
# typed just before the click can reach the server's state after the click's trigger (SDSegWebApp.segment_or_cancel).
RUN_FIELDS = ("model", "samples", "steps", "seed", "device")
RUN_FIELDS_ON_PAGE = "{" + ", ".join(f"{name}: sdseg_{name}" for name in RUN_FIELDS) + "}"
# The statistics table's headers in the panel: short, so that its five columns fit the drawer.
COLUMN_LABELS = {"segment": "segment", "volume_ml": "ml", "voxels": "voxels", "variance_mean": "mean var.",
                 "mean_dice_with_other_samples": "Dice"}
EXPORT_BUTTONS = (("segmentation", ".seg.nrrd"), ("nifti", "NIfTI labelmap"), ("dicom", "DICOM SEG"),
                  ("variance", "variance .nrrd"), ("stats", "statistics .csv"))


def build(app) -> SimpleNamespace:
    """Build the page of ``app`` (an SDSegWebApp); returns the layout and the segment editor UI."""
    with ViewerLayout(app.server, title="SDSegSlicer Web", is_drawer_visible=True) as layout:
        layout.typed_state.data.active_tool = PANEL_TOOL
        layout.typed_state.data.is_volume_loaded = True
        with layout.appbar:
            html.Span("{{ sdseg_volume_name }}", id="sdseg-volume-name", classes="text-caption mx-4")
        with layout.toolbar:
            _tool_button(layout, "mdi-creation", "SDSeg: segment with uncertainty", PANEL_TOOL, "sdseg-tool-panel")
            _tool_button(layout, "mdi-pencil-ruler", "Segment editor: edit the accepted sample", EDITOR_TOOL,
                         "sdseg-tool-editor")
        with layout.drawer:
            with html.Div(v_if=(_is_active(layout, PANEL_TOOL),), classes="pa-3", id="sdseg-panel"):
                _panel(app)
            html.Div("Nothing to edit yet: segment, show One sample, press Accept (SDSeg panel); the accepted "
                     "segment opens here.", v_if=(f"{_is_active(layout, EDITOR_TOOL)} && !sdseg_has_accepted",),
                     classes="text-caption pa-3", id="sdseg-editor-hint")
            editor = SegmentEditorUI(v_if=(_is_active(layout, EDITOR_TOOL),))
        with layout.content:
            app.layout_manager.initialize_layout_grid(layout)
    return SimpleNamespace(layout=layout, editor=editor)


def _is_active(layout, tool: str) -> str:
    return f"{layout.typed_state.name.active_tool} === '{tool}'"


def _tool_button(layout, icon: str, name: str, tool: str, element_id: str) -> None:
    def toggle():
        data = layout.typed_state.data
        data.is_drawer_visible = not data.is_drawer_visible or data.active_tool != tool
        data.active_tool = tool if data.is_drawer_visible else None

    ControlButton(icon=icon, name=name, click=toggle, active=(_is_active(layout, tool),), classes="mt-1",
                  id=element_id)


def _section(title: str) -> None:
    VDivider(classes="my-2")
    html.Div(title, classes="text-subtitle-2 mb-1")


def _legend() -> None:
    """What the colours in the views mean: the consensus, the samples, the variance's colour bar."""
    consensus = "rgb({})".format(", ".join(str(round(255 * c)) for c in CONSENSUS_COLOUR))
    low, high = VARIANCE_DISPLAY_RANGE
    with html.Div(id="sdseg-legend", classes="text-caption mt-2"):
        with html.Div(classes="d-flex align-center ga-1"):
            html.Span(style=f"display:inline-block;width:14px;height:10px;background:{consensus}")
            html.Span("consensus; samples: one colour each (outlines in All)")
        with html.Div(classes="d-flex align-center ga-1"):
            html.Span(f"variance {low:g}")
            html.Span(style=f"display:inline-block;flex:1;height:10px;background:{variance_display.css_gradient()}",
                      id="sdseg-variance-colour-bar")
            html.Span(f"{high:g} (samples split 50/50)")


def _panel(app) -> None:
    ctrl = app.server.controller
    html.Div("Input", classes="text-subtitle-2 mb-1")
    VFileInput(v_model=("sdseg_upload_files", None), label="Upload a volume (.nrrd, .nii.gz, .mha)",
               raw_attrs=[f'accept="{UPLOAD_TYPES}"', ':key="sdseg_upload_generation"'], density="compact",
               hide_details=True,
               prepend_icon="mdi-file-upload", id="sdseg-upload",
               change=(f"trigger('{ctrl.trigger_name(app.upload)}', [$event.target.files])"))

    with html.Div(v_if=("sdseg_replace_question",), id="sdseg-replace", classes="mt-2"):
        html.Div("{{ sdseg_replace_question }}", classes="text-caption", id="sdseg-replace-question")
        with html.Div(classes="d-flex ga-1 mt-1"):
            VBtn("Load it", id="sdseg-replace-load", size="small", color="warning",
                 click=lambda: app.answer_replace(True))
            VBtn("Keep the result", id="sdseg-replace-keep", size="small", variant="tonal",
                 click=lambda: app.answer_replace(False))

    _section("Lesion")
    with html.Div(classes="d-flex ga-1"):
        VBtn("Click lesion", id="sdseg-place-point", size="small", prepend_icon="mdi-map-marker-plus",
             disabled=("!sdseg_volume_loaded",), click=lambda: app.place("point"))
        VBtn("Draw box", id="sdseg-place-box", size="small", prepend_icon="mdi-selection",
             disabled=("!sdseg_volume_loaded",), click=lambda: app.place("box"))
        VBtn("Clear", id="sdseg-clear-prompts", size="small", variant="text", click=app.clear_prompts)
    html.Div("{{ point }}", v_for="point in sdseg_points", classes="text-caption sdseg-point")
    html.Div("{{ sdseg_box }}", v_if=("sdseg_box",), classes="text-caption")
    html.Div("No point and no box: the whole volume is segmented.",
             v_if=("!sdseg_points.length && !sdseg_box",), classes="text-caption text-medium-emphasis")

    _section("Model")
    with VSelect(v_model=("sdseg_model",), items=("sdseg_models",), item_title="label", item_value="name",
                 density="compact", hide_details=True, id="sdseg-model", disabled=("sdseg_running",)):
        VTooltip(text=("sdseg_models.find(m => m.name === sdseg_model)?.card || ''",), activator="parent",
                 location="end", max_width=480)
    with html.Div(classes="d-flex ga-1 mt-2"):
        VTextField(v_model_number=("sdseg_samples",), label="Samples", type="number", min=1, max=MAX_SAMPLES,
                   density="compact", hide_details=True, id="sdseg-samples")
        VTextField(v_model_number=("sdseg_steps",), label="Steps", type="number", min=0,
                   density="compact", hide_details=True, id="sdseg-steps")
        VTextField(v_model_number=("sdseg_seed",), label="Seed", type="number", density="compact",
                   hide_details=True, id="sdseg-seed")
    html.Div("Steps 0: the model's own.", classes="text-caption text-medium-emphasis")
    VSelect(v_model=("sdseg_device",), items=("devices", list(DEVICES)), label="Device", density="compact",
            hide_details=True, classes="mt-2")
    html.Div("{{ sdseg_device_line }}", classes="text-caption text-medium-emphasis", id="sdseg-device-line")

    VBtn("{{ sdseg_running ? 'Cancel' : 'Segment' }}", id="sdseg-segment", block=True, classes="mt-3",
         color=("sdseg_running ? 'warning' : 'primary'",), disabled=("!sdseg_volume_loaded",),
         click=f"trigger('{ctrl.trigger_name(app.segment_or_cancel)}', [sdseg_running, {RUN_FIELDS_ON_PAGE}])")
    VProgressLinear(model_value=("sdseg_progress",), indeterminate=("sdseg_progress_moving",), height=6,
                    classes="mt-2", color="primary", id="sdseg-progress-bar")
    html.Div("{{ sdseg_progress_text }}", id="sdseg-progress", classes="text-caption")
    html.Div("{{ sdseg_status }}", id="sdseg-status", classes="text-caption mt-1",
             style=("sdseg_status_error ? 'color: #ff6b6b' : ''",))

    with html.Div(v_if=("sdseg_has_result",), id="sdseg-results"):
        _section("Samples")
        with VBtnToggle(v_model=("sdseg_sample_mode",), mandatory=True, density="compact", divided=True):
            VBtn("Consensus", value="none", size="small", id="sdseg-mode-none")
            VBtn("One", value="one", size="small", id="sdseg-mode-one")
            VBtn("All", value="all", size="small", id="sdseg-mode-all")
        with html.Div(classes="d-flex align-center ga-1 mt-1"):
            VBtn(icon="mdi-chevron-left", size="small", variant="text", id="sdseg-previous",
                 disabled=("sdseg_sample_mode !== 'one'",), click=lambda: app.show_sample(-1))
            html.Span("{{ sdseg_sample_label }}", id="sdseg-sample-label", classes="text-caption")
            VBtn(icon="mdi-chevron-right", size="small", variant="text", id="sdseg-next",
                 disabled=("sdseg_sample_mode !== 'one'",), click=lambda: app.show_sample(1))
            VBtn("Accept", size="small", id="sdseg-accept", disabled=("sdseg_sample_mode !== 'one' || sdseg_running",),
                 click=app.accept_sample)

        _legend()

        _section("Variance")
        VCheckbox(v_model=("sdseg_variance_on",), label="Show the sample variance", density="compact",
                  hide_details=True, id="sdseg-variance-on")
        VSlider(v_model=("sdseg_variance_opacity",), label="Opacity", min=0, max=1, step=0.05, density="compact",
                hide_details=True, id="sdseg-variance-opacity")
        VSlider(v_model=("sdseg_variance_threshold",), label="Hide below", min=0, max=0.25, step=0.01,
                density="compact", hide_details=True, thumb_label=True, id="sdseg-variance-threshold")

        _section("Statistics")
        with VTable(density="compact", id="sdseg-stats"):
            with html.Thead(), html.Tr():
                html.Th("{{ header }}", v_for="header in sdseg_stats_headers", classes="text-caption px-1")
            with html.Tbody():
                with html.Tr(v_for="row in sdseg_stats_rows"):
                    html.Td("{{ cell }}", v_for="cell in row", classes="text-caption px-1")

        _section("Export")
        with html.Div(classes="d-flex flex-wrap ga-1"):
            for what, label in EXPORT_BUTTONS:
                VBtn(label, size="small", variant="tonal", id=f"sdseg-export-{what}",
                     disabled=("sdseg_running || !sdseg_dicom_input" if what == "dicom" else "sdseg_running",),
                     click=(f"trigger('{ctrl.trigger_name(app.export)}', ['{what}']).then((data) => data && "
                            f"utils.download(sdseg_export_names['{what}'], data, 'application/octet-stream'))"))
        html.Div(DICOM_ONLY, v_if=("!sdseg_dicom_input",), id="sdseg-dicom-only",
                 classes="text-caption text-medium-emphasis mt-1")
