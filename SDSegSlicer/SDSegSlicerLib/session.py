"""One user's segmentation work, without Qt: the worker process, the current run, its result, what the user may do
meanwhile (busy state), and the exports. The Slicer module's logic is this session plus the parameter node and
the installers; the headless command and the tests drive the same methods on a scene from slicer-core.

Every method that waits (starting the worker) runs under ``busy()``: a GUI that keeps processing events while it
waits cannot start a second worker, a run, or an installation in the middle, and a caller that re-enters gets a
:class:`BusyError` whose message says what is going on.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil

from . import export, module_logic, prompts, stats
from .run import SegmentationRun
from .remote_client import RemoteWorkerClient
from .segmentation_writer import segment_ids_by_name
from .temp_folders import owned_temp_folder
from .worker_client import WorkerClient, WorkerError

WORKER_START_TIMEOUT_S = 180
INPUT_FOLDER_PREFIX = "SDSegSlicer-input-"  # the worker's copy of the input volume
# Each export and the end of its file name (after the result's name); "stats" also writes a .json beside the .csv.
EXPORT_SUFFIXES = {"segmentation": ".seg.nrrd", "nifti": "_consensus.nii.gz", "dicom": "_seg.dcm",
                   "variance": "_variance.nrrd", "stats": "_summary.csv"}
EXPORTS = tuple(EXPORT_SUFFIXES)


class BusyError(RuntimeError):
    """Another action (installing, starting the worker) is in progress; the message names it."""


class SegmentationSession:
    """The worker client, the current SegmentationRun and the result nodes of a scene."""

    def __init__(self, scene):
        self.scene = scene
        self.client = None
        self.client_python = None
        self.run = None
        self.result_segmentation = None
        self.result_variance = None
        self.busy_reason = None
        self._input_dir = None

    # --- busy state -----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def busy(self, reason: str):
        """Mark the session busy with ``reason`` (e.g. "installing the backend") while the block runs;
        raises BusyError if it is busy already."""
        if self.busy_reason is not None:
            raise BusyError(f"Please wait: {self.busy_reason}.")
        self.busy_reason = reason
        try:
            yield
        finally:
            self.busy_reason = None

    # --- worker ---------------------------------------------------------------------------------------------

    def worker_ready(self, python_executable: str = "", server_url: str = "") -> bool:
        """Whether the worker of these settings runs and said hello (a warm start may still be loading)."""
        return (self.client is not None and self.client.is_running() and self.client.hello is not None
                and self.client_python == (server_url or python_executable))

    def warm_up_worker(self, python_executable: str = "", external_env: dict | None = None) -> bool:
        """Launch the local worker with ``python_executable`` without waiting for it, so that it loads PyTorch
        while the user looks at the volume and Segment finds it ready (poll_warm_worker() takes its hello). Nothing
        when a worker runs or starts already (or a server is used), or another action is going on; whether a worker
        was launched. A WorkerError says why it cannot be launched."""
        if (self.client is not None and self.client.is_running()) or self.busy_reason is not None:
            return False
        self.stop_worker()  # one that ended: its job folders go
        client = WorkerClient(python_executable=python_executable or None,
                              env=external_env if python_executable else None)
        client.launch()
        self.client, self.client_python = client, python_executable
        return True

    def poll_warm_worker(self) -> dict | None:
        """The hello of the worker warm_up_worker() launched once it came, else None; a WorkerError (the worker
        forgotten) when it ended before."""
        if self.client is None:
            return None
        try:
            return self.client.poll_ready()
        except WorkerError:
            self.client, self.client_python = None, None
            raise

    def start_worker(self, python_executable: str = "", timeout: float = WORKER_START_TIMEOUT_S, on_wait=None,
                     external_env: dict | None = None, server_url: str = "", token: str | None = None,
                     restart: bool = True) -> dict:
        """(Re)start the worker with ``python_executable`` (empty: this Python), or connect to the server at
        ``server_url`` (with ``token``), and return its hello. Without ``restart``, a worker of these settings that
        runs already (a warm start still loading included) is kept and its hello waited for. ``on_wait()`` is
        called while a local worker loads (a GUI processes its events there). ``external_env`` is the environment
        for an external interpreter (in Slicer: the one Slicer was started with, without its own library paths)."""
        if self.is_running():
            raise BusyError("A segmentation is running: cancel it before restarting the worker.")
        with self.busy("the worker is starting"):
            if not restart and not server_url and self.client is not None and self.client.is_running() \
                    and self.client_python == python_executable:
                try:
                    return self.client.wait_ready(timeout, on_wait)
                except WorkerError:
                    self.client, self.client_python = None, None
                    raise
            self.stop_worker(on_wait)
            if server_url:
                client = RemoteWorkerClient(server_url, token)
                hello = client.start()
            else:
                client = WorkerClient(python_executable=python_executable or None,
                                      env=external_env if python_executable else None)
                hello = client.start(timeout, on_wait=on_wait)
            self.client, self.client_python = client, server_url or python_executable
            return hello

    def stop_worker(self, on_wait=None) -> None:
        """Stop the worker (or close the server's connection); ``on_wait()`` is called while it exits."""
        if self.client is not None:
            self.client.stop(on_wait=on_wait)
        self.client, self.client_python = None, None

    # --- run ------------------------------------------------------------------------------------------------

    def is_running(self) -> bool:
        return self.run is not None and self.run.state == "running"

    @staticmethod
    def build_job(volume_node, *, points_node=None, roi_node=None, slice_start: int = 0, slice_end: int = -1,
                  stop_after_empty: int = prompts.DEFAULT_STOP_AFTER_EMPTY, model: str | None = None,
                  samples: int | None = None, steps: int | None = None, seed: int = 0, device: str = "auto") -> dict:
        """The segment job for a volume node, without the volume file. Checks everything that is cheap to check
        (volume, points, ROI, slice range); a ValueError says what to fix.

        Lesion points (a markups node with control points): one lesion each, inside the ROI and slice range.
        No points and an ROI: the ROI is the lesion's box, inside the slice range. Neither: whole-volume mode
        (every slice of the slice range; job["prompt"] None)."""
        if volume_node is None:
            raise ValueError("Select an input volume first.")
        slice_axis = module_logic.slice_axis_closest_to_superior(volume_node)
        points = prompts.points_ijk(points_node, volume_node) if points_node is not None else []
        box = roi_node is not None and not points
        lesions = ([{"point_ijk": point} for point in points] if points
                   else [{"box_ijk": module_logic.roi_ijk_bounds(roi_node, volume_node)}] if box else [])
        return {
            "model": model or None, "samples": samples, "steps": steps or None, "seed": seed, "device": device,
            "batch_size": None, "slice_axis": slice_axis,
            "roi_ijk": module_logic.job_roi_ijk(volume_node, None if box else roi_node, slice_start, slice_end,
                                                slice_axis),
            "prompt": prompts.prompt_request(lesions, stop_after_empty),
        }

    def start_run(self, job: dict, volume_node) -> SegmentationRun:
        """Write ``volume_node`` for the worker (uncompressed: fast) and start a streamed run of ``job``. The
        previous result stays the session's result until the new run has started."""
        if self.busy_reason is not None:
            raise BusyError(f"Please wait: {self.busy_reason}.")
        if self.is_running():
            raise BusyError("A segmentation is running already: cancel it first.")
        if self.client is None or not self.client.is_running():
            raise WorkerError("The worker is not running: click 'Restart worker' in the Backend section.")
        input_dir = owned_temp_folder(INPUT_FOLDER_PREFIX)
        try:
            volume_file = export.export_volume(volume_node, os.path.join(input_dir, "input.nrrd"), compress=False)
            run = SegmentationRun(self.scene, self.client, {**job, "volume": volume_file},
                                  reference_volume_node=volume_node)
            run.start()
        except BaseException:
            shutil.rmtree(input_dir, ignore_errors=True)
            raise
        self.finish_run()
        self.forget_results()
        self.run, self._input_dir = run, input_dir
        return run

    def process_run(self) -> str:
        """Handle the worker's messages; keep the result nodes as soon as they exist. Returns the run state."""
        state = self.run.process_messages()
        if self.result_segmentation is None and self.run.segmentation_node is not None:
            self.result_segmentation = self.run.segmentation_node
            self.result_variance = self.run.variance_node
        return state

    def cancel_run(self) -> None:
        if self.is_running():
            self.run.cancel()

    def abandon_run(self) -> None:
        """Cancel the run and forget it and its results (the scene that holds them is closing)."""
        if self.is_running():
            self.run.cancel()
            self.run.abandon()
        self.run = None
        self.forget_results()
        self.finish_run()

    def finish_run(self) -> None:
        """Delete the temporary input volume of a finished run."""
        if self._input_dir and not self.is_running():
            shutil.rmtree(self._input_dir, ignore_errors=True)
            self._input_dir = None

    def shutdown(self, on_wait=None) -> None:
        self.abandon_run()
        self.stop_worker(on_wait)

    # --- results --------------------------------------------------------------------------------------------

    def forget_results(self) -> None:
        self.result_segmentation = self.result_variance = None

    def has_result(self) -> bool:
        return self.result_segmentation is not None and self.result_segmentation.GetScene() is not None

    def require_result(self) -> None:
        if not self.has_result():
            raise ValueError("No result yet: run a segmentation first.")

    def sample_segment_ids(self) -> list[str]:
        """IDs of the result's sample segments, lesion by lesion, in order (none yet, or the node was deleted: [])."""
        if not self.has_result():
            return []
        ids_by_name = segment_ids_by_name(self.result_segmentation)
        return [ids_by_name[name] for name in stats.result_segment_names(self.result_segmentation)
                if not stats.is_consensus(name)]

    def accept_sample(self, sample_segment_id: str) -> str:
        """Copy a sample into a new editable `accepted` segment; returns the new segment's name."""
        self.require_result()
        new_id = module_logic.accept_sample(self.result_segmentation, sample_segment_id)
        return self.result_segmentation.GetSegmentation().GetSegment(new_id).GetName()

    def statistics(self) -> dict:
        """stats.segmentation_statistics() of the current result."""
        self.require_result()
        return stats.segmentation_statistics(self.result_segmentation, self.result_variance)

    def statistics_in_background(self) -> stats.BackgroundStatistics:
        """The statistics of the current result computed in a thread: step() it from a GUI timer, then result()."""
        self.require_result()
        return stats.BackgroundStatistics(self.result_segmentation, self.result_variance)

    def export_file_names(self) -> dict:
        """``{export: file name}`` of the current result's exports (EXPORTS), named after the result."""
        self.require_result()
        base = re.sub(r"[^\w.-]+", "_", self.result_segmentation.GetName())
        return {export_name: base + suffix for export_name, suffix in EXPORT_SUFFIXES.items()}

    def export_result(self, what: str, folder, source_dicom=None) -> str:
        """Write one export (one of EXPORTS) into ``folder``, named by export_file_names(); returns its path.
        ``source_dicom``: the folder or the files of the input's DICOM series (DICOM SEG; inside Slicer the volume's
        DICOM attributes say it)."""
        if what not in EXPORT_SUFFIXES:
            raise ValueError(f"Unknown export '{what}'; choose one of {', '.join(EXPORTS)}.")
        path = os.path.join(folder, self.export_file_names()[what])
        if what == "segmentation":
            return export.export_segmentation(self.result_segmentation, path)
        if what == "nifti":  # a labelmap holds one label per voxel: the consensus of each lesion (label L)
            ids_by_name = segment_ids_by_name(self.result_segmentation)
            consensus_ids = [ids_by_name[names[0]] for names in stats.result_lesions(self.result_segmentation)]
            export.export_nifti_labelmap(self.result_segmentation, path, consensus_ids)
            return path
        if what == "dicom":
            return export.export_dicom_seg(self.result_segmentation, path, source_dicom=source_dicom)
        if what == "variance":
            return export.export_volume(self.result_variance, path)
        stats.write_statistics(self.statistics(), path[: -len(".csv")] + ".json", path)
        return path
