"""SDSegSlicer Web: the module's workflow in a browser, on Slicer's own MRML and slice views (trame-slicer).

The page state (``sdseg_*`` names) is the only thing the browser sees; everything it triggers goes through
SDSegSlicerLib's SegmentationSession, the same logic as the Slicer module and the headless command, with the
model in the same separate worker process. The worker starts in a thread, and a run is started and polled in an
asyncio task of its own: wslink handles a page's messages one at a time, so a click handler that waited for the
run would hold back every other click (Cancel included) until the run ended. For the same reason the heavy work of a
result, its statistics and its 3D surfaces, runs in threads (MRML is read and written on the loop only): a display
mode chosen meanwhile shows at once.

The page keeps one result at a time (in Slicer, every run's result stays as nodes of its own): a new run, once it has
started, removes the previous result's nodes from the scene, and loading another volume removes the result of the
one before, so no result of another run or another patient stays drawn or can be exported.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from pathlib import Path

import slicer
from slicer import vtkMRMLMarkupsNode
from trame.app import TrameApp, asynchronous
from trame.app.file_upload import ClientFile
from trame_slicer import module as trame_slicer_module
from trame_slicer.app.logic.segmentation import SegmentEditorLogic
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories

from SDSegSlicerLib import result_view, variance_display
from SDSegSlicerLib.module_logic import ACCEPTED_SEGMENT_NAME
from SDSegSlicerLib.prompts import WHOLE_VOLUME_WARNING, points_ijk
from SDSegSlicerLib.run import DEFAULT_SAMPLES, MAX_SAMPLES
from SDSegSlicerLib.segmentation_writer import ensure_converter_rules
from SDSegSlicerLib.session import EXPORTS, BusyError, SegmentationSession
from SDSegSlicerLib.worker_client import WorkerError

from . import panel, view_aids
from .access import loopback_host_middleware, token_middleware
from .slice_annotations import slice_view_ui, voxel_of
from .view_fit import keep_slices_fitted
from .volumes import load_input

POLL_INTERVAL_S = 0.1
WORKER_STARTING = "Starting the worker (loading PyTorch)..."
DEFAULT_LAYOUT = "Axial Primary"
UNFINISHED_PROMPT = {  # Segment while a point or a box is being placed
    "point": "Not started: click the lesion in a slice view first (or Clear to segment the whole volume).",
    "box": "Not started: the box is not finished: click its second corner in a slice view (or Clear).",
}
DOUBLE_CLICK_S = 0.5  # a Cancel this soon after Segment is the second click of a double click on Segment
POINT_EVENTS = (vtkMRMLMarkupsNode.PointPositionDefinedEvent, vtkMRMLMarkupsNode.PointRemovedEvent)
log = logging.getLogger("SDSegSlicerWeb")


def whole_number(value, name: str, low: int, high: int | None = None, hint: str = "") -> int:
    """A number field of the page (``value`` as the browser sent it) as an int from ``low`` to ``high`` (None: no
    limit); otherwise (empty, a fraction, out of range) a ValueError with one line that names the field."""
    number = value
    if isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            number = None
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    if isinstance(number, bool) or not isinstance(number, int) or number < low or (high is not None and number > high):
        bounds = f"from {low} to {high}" if high is not None else f"of {low} or more"
        given = "the field is empty" if value is None or str(value).strip() == "" else f"not {value}"
        raise ValueError(f"{name} must be a whole number {bounds}{hint}: {given}.")
    return number


def accepted_segment_names(segmentation_node) -> list[str]:
    """The names of the segments of a result that the user accepted (and may have edited)."""
    segmentation = segmentation_node.GetSegmentation()
    names = [segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments())]
    return [name for name in names if name.startswith(ACCEPTED_SEGMENT_NAME)]


def accepted_segments_text(names: list[str]) -> str:
    """"your accepted segment 'accepted'" (or segments)."""
    return f"your accepted segment{'s' if len(names) > 1 else ''} {', '.join(repr(name) for name in names)}"


def sentences(*parts: str) -> str:
    """The non-empty ``parts`` as one status line, each ended with a full stop unless it has one."""
    return " ".join(part if part.endswith((".", "!", "?", ":")) else part + "."
                    for part in (part.strip() for part in parts) if part)


class SDSegWebApp(TrameApp):
    """One browser workspace: a Slicer scene, its views, the segment editor and a SegmentationSession."""

    def __init__(self, server=None, *, python_executable: str = "", worker_url: str = "",
                 worker_token: str | None = None, access_token: str | None = None,
                 max_upload_mb: int):
        super().__init__(server)
        self.server.enable_module(trame_slicer_module)
        self.slicer_app = SlicerApp()
        ensure_converter_rules()
        register_rca_factories(self.slicer_app.view_manager, self.server, slice_view_ui_f=slice_view_ui)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, self.server)
        self.layout_manager.register_layout_dict(LayoutManager.default_grid_configuration())
        self.layout_manager.set_layout(DEFAULT_LAYOUT)
        self.editor_logic = SegmentEditorLogic(self.server, self.slicer_app)
        self.session = SegmentationSession(self.slicer_app.scene)
        self.browser = result_view.SampleBrowser(self.session, mode="none")
        self.worker_options = {"python_executable": python_executable, "server_url": worker_url,
                               "token": worker_token}
        self.max_upload_bytes = max_upload_mb * 1024 * 1024
        self.volume_node = self.points_node = self.roi_node = None
        self._pending_upload = None  # an uploaded volume waiting for the answer to sdseg_replace_question
        self.source_dicom = None
        self._results_shown = False
        self._run_notes = result_view.RunNotes()
        self._replaced_note = ""  # says that the previous result, with segments the user accepted, was replaced
        self._run_task = None  # starts and follows a run (segment_or_cancel)
        self._worker_start = None  # the task that starts the worker (ensure_worker)
        self._cancel_requested = False
        self._segment_clicked_at = 0.0
        self._work_dir = tempfile.TemporaryDirectory(prefix="SDSegSlicerWeb-")  # uploads, exports
        self._init_state()
        self.ui = panel.build(self)
        self.editor_logic.set_ui(self.ui.editor)
        keep_slices_fitted(self.slicer_app.view_manager.get_slice_views())
        view_aids.add_orientation_aids(self.slicer_app.view_manager)
        gate = token_middleware(access_token) if access_token else loopback_host_middleware()
        self.ctrl.on_server_bind.add(lambda server: server.app.middlewares.append(gate))
        self.ctrl.on_server_ready.add(lambda **_: asyncio.ensure_future(self.ensure_worker()))
        self.ctrl.on_server_exited.add(lambda **_: self.shutdown())

    def _init_state(self) -> None:
        self.state.update({
            "trame__title": "SDSegSlicer Web",
            "sdseg_volume_name": "", "sdseg_volume_loaded": False, "sdseg_dicom_input": False,
            "sdseg_models": result_view.model_choices([]), "sdseg_model": "",
            "sdseg_samples": DEFAULT_SAMPLES, "sdseg_steps": 0, "sdseg_seed": 0, "sdseg_device": "auto",
            "sdseg_device_line": "worker not started",
            "sdseg_points": [], "sdseg_box": "", "sdseg_placing": "",
            "sdseg_running": False, "sdseg_progress": 0, "sdseg_progress_moving": False, "sdseg_progress_text": "",
            "sdseg_status": "", "sdseg_status_error": False,
            "sdseg_has_result": False, "sdseg_has_accepted": False, "sdseg_sample_label": "Sample -",
            "sdseg_sample_mode": "none",
            "sdseg_variance_on": True, "sdseg_variance_opacity": 0.5, "sdseg_variance_threshold": 0.0,
            "sdseg_stats_headers": [], "sdseg_stats_rows": [], "sdseg_export_names": {},
            "sdseg_replace_question": "", "sdseg_upload_generation": 0,
        })
        self.state.change("sdseg_variance_on", "sdseg_variance_opacity")(self.on_variance_display)
        self.state.change("sdseg_variance_threshold")(self.on_variance_threshold)
        self.state.change("sdseg_sample_mode")(lambda sdseg_sample_mode, **_: self.show_sample(mode=sdseg_sample_mode))

    def shutdown(self) -> None:
        if self.run_active():
            self._run_task.cancel()
        self.session.shutdown()

    # --- messages ---------------------------------------------------------------------------------------------

    def set_status(self, message: str, error: bool = False) -> None:
        self.state.sdseg_status, self.state.sdseg_status_error = message, error
        if error:
            log.warning(message)

    # --- input ------------------------------------------------------------------------------------------------

    def load_volume(self, path: str) -> bool:
        """Load a volume file or DICOM folder and show it; False (and a status line) if it cannot be read."""
        if self.run_active():
            self.set_status("A segmentation is running: cancel it before loading another volume.", error=True)
            return False
        try:
            node, source_dicom = load_input(self.slicer_app, path)
        except ValueError as error:
            self.set_status(str(error), error=True)
            return False
        lost = self._remove_result(self._result_nodes(), "The previous volume's result")
        self.session.abandon_run()  # not running: forgets the finished run and its result
        self._reset_result_state()
        self.state.update({"sdseg_progress": 0, "sdseg_progress_text": ""})
        self.volume_node, self.source_dicom = node, source_dicom
        self.slicer_app.display_manager.show_volume(node, do_reset_views=True)
        view_aids.hide_volume_rendering(self.slicer_app.volume_rendering, node)
        self.clear_prompts()
        self.state.sdseg_volume_name, self.state.sdseg_volume_loaded = node.GetName(), True
        self.state.sdseg_dicom_input = source_dicom is not None
        self.set_status(sentences(f"Loaded {node.GetName()}: click the lesion, then Segment.", lost))
        return True

    def upload(self, files: list[dict]) -> None:
        """Files chosen in the browser (one volume file)."""
        files = [ClientFile(item) for item in files or []]
        # The field made anew (its key changes): empty, it shows no refused file and takes the same file again (a
        # browser's file input fires no change for the file it already holds; resetting the model alone raced with
        # the field's own update of it, and one time in many the field kept the file).
        self.state.sdseg_upload_files = None
        self.state.sdseg_upload_generation += 1
        if len(files) != 1:
            self.set_status("Choose one volume file (.nrrd, .nii.gz, .mha).", error=True)
            return
        content = files[0].content or b""
        size = len(content)  # the bytes received: the size the browser states may be anything
        if size > self.max_upload_bytes:
            self.set_status(f"{files[0].name} is {size / 2**20:.0f} MB, more than this server accepts "
                            f"({self.max_upload_bytes / 2**20:.0f} MB).", error=True)
            return
        name = Path(str(files[0].name or "")).name
        if name in ("", ".", "..") or "\x00" in name:
            self.set_status(f"{str(files[0].name)[:100]!r} is not a file name: rename the file.", error=True)
            return
        folder = tempfile.mkdtemp(prefix="SDSegSlicerWeb-upload-", dir=self._work_dir.name)
        path = Path(folder) / name
        path.write_bytes(content)
        if self.session.has_result():  # ask first: loading drops the result (one result at a time)
            self._pending_upload = str(path)
            self.state.sdseg_replace_question = (
                f"Load {path.name}? The current result{self._accepted_names_note()} goes with the volume it was "
                "made on: export it first to keep it.")
            return
        self.load_volume(str(path))

    def answer_replace(self, load: bool) -> None:
        """The answer to the question upload() asked: load the uploaded volume (dropping the result) or keep the
        result and the volume it was made on."""
        path, self._pending_upload = self._pending_upload, None
        self.state.sdseg_replace_question = ""
        if path is None:
            return
        if load:
            self.load_volume(path)
        else:
            self.set_status(f"Kept the result; {Path(path).name} was not loaded.")

    def _accepted_names_note(self) -> str:
        """', with your accepted segment 'accepted',' when the result has accepted segments, else ''."""
        accepted = accepted_segment_names(self.session.result_segmentation)
        return f", with {accepted_segments_text(accepted)}," if accepted else ""

    # --- prompts ----------------------------------------------------------------------------------------------

    def _markups_node(self, kind: str):
        if kind == "point":
            if self.points_node is None or self.points_node.GetScene() is None:
                self.points_node = self.slicer_app.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode",
                                                                           "lesion points")
                self.points_node.CreateDefaultDisplayNodes()
                self.points_node.SetMarkupLabelFormat("%d")  # "1" beside lesion 1's point, not "lesion points-1"
                for event in POINT_EVENTS:
                    self.points_node.AddObserver(event, lambda *_: self._prompts_changed())
            return self.points_node
        if self.roi_node is None or self.roi_node.GetScene() is None:
            self.roi_node = self.slicer_app.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "lesion box")
            self.roi_node.CreateDefaultDisplayNodes()
            self.roi_node.AddObserver(vtkMRMLMarkupsNode.PointPositionDefinedEvent, lambda *_: self._prompts_changed())
        return self.roi_node

    def place(self, kind: str) -> None:
        """Next click in a view places a lesion point (``kind`` "point") or the box (``"box"``)."""
        if self.volume_node is None:
            self.set_status("Load a volume first.", error=True)
            return
        node = self._markups_node(kind)
        if kind == "box":
            node.RemoveAllControlPoints()
        self.slicer_app.markups_logic.place_node(node, persistent=False)
        self.state.sdseg_placing = kind
        self.set_status("Click the lesion in a slice view." if kind == "point"
                        else "Click two opposite corners of the box around the lesion.")

    def clear_prompts(self) -> None:
        if self.state.sdseg_placing:
            self.slicer_app.markups_logic.disable_place_mode()
            self.state.sdseg_placing = ""
        for node in (self.points_node, self.roi_node):
            if node is not None and node.GetScene() is not None:
                node.RemoveAllControlPoints()
        self._prompts_changed()
        if self.volume_node is not None and not self.run_active():
            self.set_status("Cleared: click the lesion (or draw a box), then Segment.")

    def _prompts_changed(self) -> None:
        with self.state:
            points = points_ijk(self.points_node, self.volume_node) if self.points_node and self.volume_node else []
            self.state.sdseg_points = [f"lesion {n}: IJK {', '.join(str(v) for v in voxel_of(point))}"
                                       for n, point in enumerate(points, start=1)]
            defined = self.roi_node is not None and self.roi_node.GetControlPointPlacementComplete()
            self.state.sdseg_box = "box drawn" if defined and not points else ""
            if self.state.sdseg_placing and (points or self.state.sdseg_box):
                self.state.sdseg_placing = ""
                self.set_status(f"{len(points)} lesion point(s): Segment." if points else "Box drawn: Segment.")

    # --- worker -----------------------------------------------------------------------------------------------

    async def ensure_worker(self) -> bool:
        """Start the worker (or connect to the server) in a thread unless it runs; fill the models and device.
        A second caller while it starts (Segment clicked then) waits for the same start."""
        if self._worker_start is None or self._worker_start.done():
            self._worker_start = asyncio.ensure_future(self._start_worker())
        return await asyncio.shield(self._worker_start)

    async def _start_worker(self) -> bool:
        options = self.worker_options
        if self.session.worker_ready(options["python_executable"], options["server_url"]):
            return True
        with self.state:
            self.set_status(WORKER_STARTING)
        try:
            hello = await asyncio.get_running_loop().run_in_executor(
                None, lambda: self.session.start_worker(**options))
        except (WorkerError, BusyError) as error:
            with self.state:
                self.set_status(str(error), error=True)
            return False
        with self.state:
            self.state.sdseg_models = result_view.model_choices(hello.get("models", []))
            self.state.sdseg_device_line = result_view.describe_device(hello)
            if self.state.sdseg_status == WORKER_STARTING:
                self.set_status("Worker ready: click the lesion, then Segment." if self.volume_node is not None
                                else "Worker ready: upload a volume.")
        return True

    # --- run --------------------------------------------------------------------------------------------------

    def job(self) -> dict:
        """The segment job of the page's settings (ValueError says what to fix, in one line)."""
        samples = whole_number(self.state.sdseg_samples, "Samples", 1, MAX_SAMPLES)
        steps = whole_number(self.state.sdseg_steps, "Steps", 0, hint=" (0: the model's own)")
        seed = whole_number(self.state.sdseg_seed, "Seed", 0)
        if self.state.sdseg_placing:  # e.g. one corner of the box clicked: never the whole volume instead
            raise ValueError(UNFINISHED_PROMPT[self.state.sdseg_placing])
        roi = self.roi_node if self.roi_node is not None and self.roi_node.GetControlPointPlacementComplete() \
            else None
        job = self.session.build_job(self.volume_node, points_node=self.points_node, roi_node=roi,
                                     model=self.state.sdseg_model or None, samples=samples, steps=steps or None,
                                     seed=seed, device=self.state.sdseg_device)
        for lesion in (job["prompt"] or {}).get("lesions", []):
            if "point_ijk" in lesion:
                lesion["point_ijk"] = voxel_of(lesion["point_ijk"])
        return job

    def run_active(self) -> bool:
        """A segmentation is starting (the worker, the volume for it) or running."""
        return self._run_task is not None and not self._run_task.done()

    def segment_or_cancel(self, cancel: bool = False, fields: dict | None = None) -> None:
        """The Segment / Cancel button; ``cancel``: the button said Cancel when it was clicked; ``fields``: the run's
        fields as the page showed them then (panel.RUN_FIELDS), which the run uses. Returns at once: the run starts
        and is followed in a background task, so every other click is handled meanwhile. A second click on Segment
        (a double click) neither starts another run nor cancels this one."""
        if cancel:
            self.cancel_run()
            return
        if self.run_active():
            return  # the page has not shown Cancel yet: a second click on Segment
        if fields:
            self.state.update({f"sdseg_{name}": fields[name] for name in panel.RUN_FIELDS if name in fields})
        try:
            job = self.job()
        except ValueError as error:
            self.set_status(str(error), error=True)
            return
        self._cancel_requested = False
        self._segment_clicked_at = time.monotonic()
        self.state.update({"sdseg_running": True, "sdseg_progress": 0, "sdseg_progress_text": "Starting..."})
        self._run_task = asynchronous.create_task(self._segment(job))

    def cancel_run(self) -> None:
        """Cancel the run; nothing when there is none to cancel: no run, a run whose end the page shows already
        (sdseg_running false while its 3D surfaces are made: a Cancel sent before the page showed Segment again), or
        the second click of a double click on Segment. A Cancel while the ended run's statistics are computed says
        "Cancelling" until the end's texts replace it."""
        if not self.run_active() or not self.state.sdseg_running \
                or time.monotonic() - self._segment_clicked_at < DOUBLE_CLICK_S:
            return
        self._cancel_requested = True
        if self.session.is_running():
            self.session.cancel_run()
        self.set_status("Cancelling: slices already segmented are kept.")

    async def _segment(self, job: dict) -> None:
        """Start the worker if needed, then the run of ``job``, and follow it to its end."""
        try:
            if not await self.ensure_worker():
                return
            with self.state:
                if self._cancel_requested:
                    self.set_status("Cancelled before the segmentation started.")
                    return
                previous = self._result_nodes()
                try:
                    self.session.start_run(job, self.volume_node)
                except (ValueError, OSError, WorkerError, BusyError) as error:
                    self.set_status(f"The segmentation did not start: {error}", error=True)
                    return
                self._replaced_note = self._remove_result(previous, "The previous result")
                self._reset_result_state()
                self.state.update({"sdseg_running": True, "sdseg_progress": 0, "sdseg_progress_text": "Starting..."})
                self.set_status(sentences(WHOLE_VOLUME_WARNING if job["prompt"] is None else "", self._replaced_note))
            await self._follow_run()
        finally:
            with self.state:
                if not self.session.is_running():
                    self.state.sdseg_running = False
                    if self.state.sdseg_progress_text == "Starting...":
                        self.state.sdseg_progress_text = ""

    async def _follow_run(self) -> None:
        """Poll the run until it ends; results appear in the views slice by slice."""
        while self.session.run is not None:
            with self.state:
                state = self.session.process_run()
                self._show_progress()
                status = self._run_notes.status(self.session.run, self.state.sdseg_status)  # at once, not at the end
                if status is not None:
                    self.set_status(status, self.state.sdseg_status_error)
                if self.session.has_result() and not self._results_shown:
                    self._show_results()
                if state != "running":
                    self.show_sample()
            if state != "running":
                await self._finish()
                return
            await asyncio.sleep(POLL_INTERVAL_S)

    def _show_progress(self) -> None:
        run = self.session.run
        percent = result_view.progress_percent(run.progress, run.state)
        self.state.update({"sdseg_progress": percent or 0, "sdseg_progress_moving": percent is None,
                           "sdseg_progress_text": result_view.progress_text(run.progress, run.elapsed_s)})

    async def _finish(self) -> None:
        """The end of a run (its last slices are shown already): the statistics and the 3D surfaces are computed with
        the page answering meanwhile (a display mode chosen then shows at once), then the texts, the table and the
        exports."""
        run = self.session.run
        statistics = await self._statistics()
        with self.state:
            progress_line, status, error = result_view.finished_texts(run, statistics)
            self.state.sdseg_running = False
            self.state.sdseg_progress_text = progress_line
            self.set_status(sentences(status, self._replaced_note) if self._replaced_note else status, error)
            self._replaced_note = ""
            if statistics is not None:
                self._show_statistics(statistics)
                self.state.sdseg_export_names = self.session.export_file_names()
        self.session.finish_run()
        if statistics is not None:
            await self._show_surfaces()

    async def _statistics(self) -> dict | None:
        """The result's statistics (None without a result, or once it is gone), the page answering meanwhile: the
        segments are read from MRML a few at a time on the loop, the numbers computed in a thread
        (stats.BackgroundStatistics)."""
        if not self.session.has_result():
            return None
        segmentation, background = self.session.result_segmentation, self.session.statistics_in_background()
        while not background.step():
            await asyncio.sleep(POLL_INTERVAL_S)
            if self.session.result_segmentation is not segmentation or not self.session.has_result():
                return None  # replaced or removed meanwhile
        return background.result()

    async def _show_surfaces(self) -> None:
        """The result as surfaces in the 3D view: made from a copy in a thread (view_aids.closed_surfaces), put in
        the result's segments on the loop, if it is still the page's result."""
        node = self.session.result_segmentation
        copy = slicer.vtkSegmentation()
        copy.DeepCopy(node.GetSegmentation())
        surfaces = await asyncio.to_thread(view_aids.closed_surfaces, copy)
        if node is self.session.result_segmentation and self.session.has_result():
            view_aids.show_result_surfaces(node, surfaces)

    async def _refresh_statistics(self) -> None:
        """The statistics table again (e.g. a segment accepted), computed with the page answering meanwhile."""
        statistics = await self._statistics()
        if statistics is not None:
            with self.state:
                self._show_statistics(statistics)

    def _show_results(self) -> None:
        self._results_shown = True
        self.state.sdseg_has_result = True
        result_view.prepare_variance_overlay(self.slicer_app.scene, self.session.result_variance, self.volume_node)
        self.on_variance_display(self.state.sdseg_variance_on, self.state.sdseg_variance_opacity)
        self.on_variance_threshold(self.state.sdseg_variance_threshold)
        self.show_sample()

    # --- results ----------------------------------------------------------------------------------------------

    def _result_nodes(self) -> list:
        """The nodes in the scene of the page's result: the session's result and those of its last run (a run that
        ended before the session kept its nodes)."""
        run = self.session.run
        candidates = [self.session.result_segmentation, self.session.result_variance]
        if run is not None:
            candidates += [run.segmentation_node, run.variance_node]
        nodes = []
        for node in candidates:
            if node is not None and node.GetScene() is not None and node not in nodes:
                nodes.append(node)
        return nodes

    def _remove_result(self, nodes: list, what: str) -> str:
        """Remove a result's ``nodes`` (segmentation, variance volume), with their display and storage nodes, from
        the scene; the segment editor lets go of the segmentation first. Returns a sentence for the status when
        segments the user accepted (and maybe edited) went with them (``what`` names the result there, e.g.
        "The previous result"), else ""."""
        scene = self.slicer_app.scene
        editor = self.editor_logic.segmentation_editor
        accepted, edited = [], False
        for node in nodes:
            if node.GetScene() is None:
                continue
            if node.IsA("vtkMRMLSegmentationNode"):
                accepted += accepted_segment_names(node)
                if editor.active_segmentation_node is node:
                    edited = True
                    editor.clear()
            helpers = [node.GetNthDisplayNode(n) for n in range(node.GetNumberOfDisplayNodes())]
            helpers.append(node.GetStorageNode())
            for helper in helpers:
                if helper is not None and helper.GetScene() is not None:
                    scene.RemoveNode(helper)
            scene.RemoveNode(node)
        if not accepted and not edited:
            return ""
        segments = accepted_segments_text(accepted) if accepted else "your edits"
        return (f"{what}, with {segments}, was removed: the page keeps one result at a time (export a result "
                f"before the next run to keep it).")

    def _reset_result_state(self) -> None:
        """The page without a result: no samples, statistics or exports."""
        self._results_shown = False
        self.browser.reset()
        self.state.update({"sdseg_has_result": False, "sdseg_has_accepted": False, "sdseg_stats_headers": [],
                           "sdseg_stats_rows": [],
                           "sdseg_sample_mode": "none", "sdseg_sample_label": "Sample -",
                           "sdseg_export_names": {}})

    def show_sample(self, step: int = 0, mode: str | None = None) -> None:
        self.state.sdseg_sample_label = self.browser.show(self.browser.index + step, mode)

    def accept_sample(self) -> None:
        try:
            message = self.browser.accept()
        except ValueError as error:
            self.set_status(str(error), error=True)
            return
        self.editor_logic.segmentation_editor.set_active_segmentation(self.session.result_segmentation,
                                                                     self.volume_node)
        ids = self.session.result_segmentation.GetSegmentation().GetSegmentIDs()
        self.editor_logic.segmentation_editor.set_active_segment_id(ids[-1])
        asynchronous.create_task(self._refresh_statistics())
        self.state.sdseg_has_accepted = True
        self.set_status(message)

    def _show_statistics(self, statistics: dict) -> None:
        headers, self.state.sdseg_stats_rows = result_view.statistics_text_table(statistics,
                                                                                result_view.SUMMARY_COLUMNS)
        self.state.sdseg_stats_headers = [panel.COLUMN_LABELS[header] for header in headers]

    def on_variance_display(self, sdseg_variance_on=None, sdseg_variance_opacity=None, **_) -> None:
        variance = self.session.result_variance if self.session.has_result() else None
        if variance is None or variance.GetScene() is None:
            return
        if sdseg_variance_on:  # also sets the opacity of the views that show it already
            variance_display.show_variance_overlay(variance, float(sdseg_variance_opacity))
        else:
            variance_display.hide_variance_overlay(variance)

    def on_variance_threshold(self, sdseg_variance_threshold=0.0, **_) -> None:
        if self.session.has_result() and self.session.result_variance.GetScene() is not None:
            variance_display.set_variance_threshold(self.session.result_variance, float(sdseg_variance_threshold))

    def export(self, what: str):
        """The bytes of one export as a download attachment (None and a status line if it cannot be written)."""
        if what not in EXPORTS:
            return None
        if what == "dicom" and self.source_dicom is None:
            self.set_status(f"Export failed: {panel.DICOM_ONLY}", error=True)
            return None
        with tempfile.TemporaryDirectory(dir=self._work_dir.name) as folder:
            try:
                path = self.session.export_result(what, folder, source_dicom=self.source_dicom)
                data = Path(path).read_bytes()
            except (OSError, ValueError) as error:  # no result, not from DICOM, missing highdicom, ...
                self.set_status(f"Export failed: {error}", error=True)
                return None
        self.set_status(f"Downloaded {Path(path).name}.")
        return self.server.protocol.addAttachment(data)
