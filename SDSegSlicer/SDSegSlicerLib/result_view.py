"""What a GUI shows of the worker and of a run, without Qt or a web framework: the device line, the model choices,
progress and end-of-run texts, the statistics table as text, the sample browser (which segments are visible) and
the variance overlay's set-up. The Slicer module and the web app both draw from these, so they say the same.
"""

from __future__ import annotations

from . import stats, variance_display
from .prompts import lesion_lines
from .run import format_duration, slices_text
from .worker_client import DEFAULT_IMAGE_KINDS

DEFAULT_MODEL_LABEL = "default model"


def describe_device(hello: dict) -> str:
    """One line about the worker's compute device, from its hello message."""
    torch_version = hello.get("torch") or "?"
    if hello.get("gpu_name"):
        free = hello.get("gpu_free_mb")
        memory = f", {free / 1024:.1f} GB free" if free is not None else ""
        return f"{hello['gpu_name']}{memory} (CUDA {hello.get('cuda')}, torch {torch_version})"
    return f"no GPU found: CPU (torch {torch_version})"


def default_model_card(models: list[dict]) -> str:
    """What the default choice of a model selector runs, from the hello's models (a worker before the CT or PET
    default sends no ``default_for_ct`` / ``default_for_pet``)."""
    general = next((model["name"] for model in models if model.get("default")), None)
    by_image = [f"{model['name']} on {image} ({rule})" for key, _, image, rule in DEFAULT_IMAGE_KINDS
                for model in models if model.get(key)]
    card = "The worker's default model"
    if by_image:
        card += f": {'; '.join(by_image)}; {general or 'its general default'} on any other volume"
    elif general is not None:
        card += f": {general}"
    return card + "."


def model_choices(models: list[dict]) -> list[dict]:
    """``[{label, name, card}]`` for a model selector: the worker's default first (name ""), then each model of
    the hello."""
    return [{"label": DEFAULT_MODEL_LABEL, "name": "", "card": default_model_card(models)}] + [
        {"label": f"{model['name']} ({model['kind']})", "name": model["name"],
         "card": model.get("card") or model.get("description") or ""} for model in models]


def progress_text(progress: dict, elapsed_s: float | None = None) -> str:
    """'segmenting: 3/25 slices, about 0:12 left' from a run's progress. A prompt job's total is only a bound (the
    propagation stops where the lesions end, often long before): no time left is claimed from it, only the time a
    slice takes so far (elapsed_s / done, when ``elapsed_s`` is given): '3 slices (at most 25), 2.1 s a slice'."""
    done, total, eta = progress["done"], progress["total"], progress["eta_s"]
    text = f"{progress['phase']}: {slices_text(progress)}" if total else progress["phase"]
    if progress.get("total_is_bound"):
        if elapsed_s is not None and done > 0:
            text += f", {elapsed_s / done:.1f} s a slice"
    elif eta is not None and done < total:
        text += f", about {format_duration(eta)} left"
    return text


def progress_percent(progress: dict, state: str) -> float | None:
    """The progress bar's percentage: 100 once the run is done (a prompt job ends before its bound), done / total
    while it runs, None (no known fraction: a moving bar) while a prompt job runs."""
    if state == "done":
        return 100.0
    if progress.get("total_is_bound") and state == "running":
        return None
    return 100.0 * progress["done"] / max(progress["total"], 1)


def with_run_notes(status: str, run) -> str:
    """``status`` followed by ``run``'s notes (the model a job naming none got, the worker's warnings about the
    input: an irregular series, a volume that does not look like the model's modality): the status line says them as
    soon as the worker accepts the job, and again when the run ends."""
    return " ".join(part for part in (status.strip(), *run.note_lines) if part)


class RunNotes:
    """The run's notes in a status line as soon as the worker accepts the run, once (the panel's and the page's loops
    that follow a run share it). It keeps the run whose notes it gave, so a new run needs no reset."""

    def __init__(self):
        self._given_for = None

    def status(self, run, status: str) -> str | None:
        """``status`` with ``run``'s notes (with_run_notes) the first time it is asked after the worker accepted
        ``run``; None otherwise: not accepted yet, no notes, or given already."""
        if run.accepted is None or run is self._given_for:
            return None
        self._given_for = run
        return with_run_notes(status, run) if run.note_lines else None


def finished_texts(run, statistics: dict | None) -> tuple[str, str, bool]:
    """(progress line, status line, whether the status is an error) when ``run`` has ended; ``statistics`` of
    its result (None: no result). The status ends with the run's notes (with_run_notes)."""
    done = run.progress["done"]
    if run.state == "done":
        lines = lesion_lines(statistics, run.accepted.get("prompt"), run.worker_lesions) if statistics else []
        return f"Done: {done} slices.", with_run_notes(" ".join(lines), run), False
    if run.state == "cancelled":
        return (f"Cancelled after {done} slices.",
                with_run_notes("Cancelled: the slices already segmented are kept.", run), False)
    return (f"Stopped after {done} slices.",
            with_run_notes(run.error_message or "The segmentation failed.", run), True)


# The columns a narrow panel shows (the module's table and the CSV have them all).
SUMMARY_COLUMNS = ("segment", "volume_ml", "voxels", "variance_mean", "mean_dice_with_other_samples")


def statistics_text_table(statistics: dict, columns=None) -> tuple[list[str], list[list[str]]]:
    """stats.statistics_table() (only ``columns``, if given) with every cell as display text (4 significant
    digits, empty for none)."""
    header, rows = stats.statistics_table(statistics)
    keep = [header.index(name) for name in columns] if columns else range(len(header))
    return [header[c] for c in keep], [
        [f"{row[c]:.4g}" if isinstance(row[c], float) else "" if row[c] is None else str(row[c]) for c in keep]
        for row in rows]


SAMPLE_MODES = ("none", "one", "all")  # which samples a browser shows beside the consensus


class SampleBrowser:
    """Which samples of a result are shown beside the consensus (always shown): none, one at a time (``index``)
    or all (``mode``). Applies it to the result's display node."""

    def __init__(self, session, mode: str = "one"):
        self.session = session
        self.default_mode = mode
        self.reset()

    def reset(self) -> None:
        self.index, self.mode = 0, self.default_mode

    def show(self, index: int | None = None, mode: str | None = None) -> str:
        """Show sample ``index`` (wrapping around) in ``mode`` (one of SAMPLE_MODES); returns the label ('Sample 2
        of 8', 'All 8 samples', 'Consensus only (8 samples)', 'Sample -' before any result)."""
        if mode is not None:
            if mode not in SAMPLE_MODES:
                raise ValueError(f"Unknown sample mode '{mode}'; choose one of {', '.join(SAMPLE_MODES)}.")
            self.mode = mode
        sample_ids = self.session.sample_segment_ids()
        if not sample_ids:
            return "Sample -"
        self.index = (self.index if index is None else index) % len(sample_ids)
        display_node = self.session.result_segmentation.GetDisplayNode()
        for position, segment_id in enumerate(sample_ids):
            display_node.SetSegmentVisibility(segment_id, self.mode == "all"
                                              or (self.mode == "one" and position == self.index))
            display_node.SetSegmentVisibility2DFill(segment_id, self.mode != "all")  # all: outlines, none hidden
        if self.mode == "all":
            return f"All {len(sample_ids)} samples"
        if self.mode == "none":
            return f"Consensus only ({len(sample_ids)} samples)"
        return f"Sample {self.index + 1} of {len(sample_ids)}"

    def accept(self) -> str:
        """Copy the shown sample into a new editable segment; returns the message for the user (ValueError: why
        not)."""
        sample_ids = self.session.sample_segment_ids()
        if self.mode != "one" or not sample_ids:
            raise ValueError("Show one sample to accept it.")
        name = self.session.accept_sample(sample_ids[self.index])
        return f"Sample {self.index + 1} copied to segment '{name}': edit it in the Segment Editor."


def prepare_variance_overlay(scene, variance_node, input_volume) -> None:
    """The blue-to-magenta colour map on the variance volume; the input volume as background where a view has none."""
    colour_node = variance_display.variance_colour_node(scene)
    variance_display.configure_variance_display(variance_node, colour_node)
    if input_volume is not None:
        variance_display.show_as_background_where_empty(input_volume)
