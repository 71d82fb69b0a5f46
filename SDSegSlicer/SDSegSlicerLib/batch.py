"""`sdseg-slicer batch`: segment a cohort, one task per volume, each task the `segment` command itself (its own
worker, its own outputs), run by a local process pool or by Ray on a cluster with GPUs. Resumable: a volume whose
summary says it is done is skipped. A volume that fails is recorded and the others go on. One summary CSV.

    inputs: a folder (its volume files, and its sub-folders as DICOM series) or a CSV with columns `id` (optional)
            and `input`;
    prompts: a CSV with columns `input` (or `id`), `kind` (point_ras, point_ijk or box_ijk) and `value` (3 or 6
             numbers separated by spaces or semicolons); several rows of one volume are several lesions.
    A relative `input` path in either CSV is relative to that CSV's own folder (not to --inputs, nor to the working
    directory).
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import PARTIAL_PREFIX
from .outputs import SEGMENTATION_SUFFIX

VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
PROMPT_KINDS = {"point_ras": ("--point", 3), "point_ijk": ("--point-ijk", 3), "box_ijk": ("--box", 6)}
SUMMARY_COLUMNS = ("id", "input", "status", "error", "lesions", "lesion_volumes_ml", "variance_mean", "seconds")
TASK_TIMEOUT_S = 24 * 3600
STOP_POLL_S = 0.2  # how often a running volume's thread, the main thread and the Ray driver look at signals
CLOCK_SLACK_S = 2.0  # a volume's summary file counts as this run's if written at most this long before it started
COMMAND_ERROR_PREFIX = re.compile(r"^[\w-]+: error: ")  # "sdseg-slicer: error: ": the cohort's lines have their own
MAX_LISTED = 10  # ids named in a one-line error
CSV_ENCODING = "utf-8-sig"  # reads what spreadsheets save as "CSV UTF-8" (with a byte-order mark) and plain UTF-8


class BatchError(ValueError):
    """A cohort that cannot be run as given; the message says what to fix."""


@dataclass
class Task:
    id: str
    input: str
    prompt_options: list[str] = field(default_factory=list)


def _id_of(path: Path) -> str:
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return re.sub(r"[^\w.-]+", "_", name) or "volume"


def read_inputs(inputs: str, out: Path) -> list[Task]:
    """The cohort's volumes, from a folder or a CSV (see the module docstring); ids must be unique. The output
    folder ``out`` is never an input (it may lie inside the inputs folder, not be it)."""
    path = Path(inputs)
    if path.is_dir():
        if path.resolve() == out.resolve():
            raise BatchError(f"--out {out} is the --inputs folder: the results would become inputs; choose another "
                             "--out")
        entries = sorted(p for p in path.iterdir() if p.resolve() != out.resolve() and (
            (p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES)) or p.is_dir()))
        tasks = [Task(_id_of(p), str(p.resolve())) for p in entries]
    elif path.is_file() and path.suffix.lower() == ".csv":
        with open(path, newline="", encoding=CSV_ENCODING) as stream:
            rows = list(csv.DictReader(stream))
        if not rows or "input" not in rows[0]:
            raise BatchError(f"--inputs {inputs}: a CSV needs an 'input' column (and optionally 'id')")
        tasks = []
        for row in rows:
            volume = Path(row["input"])
            volume = volume if volume.is_absolute() else (path.parent / volume)
            tasks.append(Task(row.get("id") or _id_of(volume), str(volume.resolve())))
    else:
        raise BatchError(f"--inputs {inputs}: no such folder or .csv file")
    if not tasks:
        raise BatchError(f"--inputs {inputs}: no volume found (files ending {', '.join(VOLUME_SUFFIXES)}, or "
                         "DICOM folders)")
    ids = [task.id for task in tasks]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise BatchError(f"--inputs {inputs}: ids used twice ({', '.join(duplicates)}); give an 'id' column")
    return tasks


def listed(names: list[str], most: int = MAX_LISTED) -> str:
    """'a, b, c' for a one-line error; past ``most`` names: the first ``most`` and 'and N more'."""
    shown = ", ".join(names[:most])
    return shown if len(names) <= most else f"{shown} and {len(names) - most} more"


def add_prompts(tasks: list[Task], prompts: str) -> None:
    """Give each task the command-line options of its lesions from the prompts CSV."""
    by_key = {key: task for task in tasks for key in (task.id, task.input)}
    with open(prompts, newline="", encoding=CSV_ENCODING) as stream:
        for line, row in enumerate(csv.DictReader(stream), start=2):
            key = row.get("input") or row.get("id") or ""
            task = by_key.get(key) or by_key.get(str((Path(prompts).parent / key).resolve()))
            if task is None:
                raise BatchError(f"--prompts {prompts}, line {line}: {key!r} is not one of the inputs (an id, or a "
                                 f"path relative to this CSV's folder); the ids: {listed([t.id for t in tasks])}")
            option, count = PROMPT_KINDS.get(row.get("kind", ""), (None, 0))
            values = [v for v in re.split(r"[\s;,]+", row.get("value", "").strip()) if v]
            if option is None or len(values) != count:
                raise BatchError(f"--prompts {prompts}, line {line}: need kind one of {', '.join(PROMPT_KINDS)} and "
                                 f"a value of {count or '3 or 6'} numbers")
            task.prompt_options += [option, ",".join(values)]


def summary_path(out: Path, task: Task) -> Path:
    return out / f"{task.id}_summary.json"


def read_summary(out: Path, task: Task, since: float | None = None) -> dict | None:
    """The volume's own summary (written last of its outputs), or None; with ``since``: only one written after
    that time (this run's, not one an earlier run left)."""
    path = summary_path(out, task)
    try:
        if since is not None and path.stat().st_mtime < since - CLOCK_SLACK_S:
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_done(out: Path, task: Task, since: float | None = None) -> bool:
    return (read_summary(out, task, since) or {}).get("state") == "done"


def remove_partial_files(out: Path) -> None:
    """Files a `segment` killed while writing left behind (atomic.atomic_output's temporary names)."""
    for partial in out.glob(PARTIAL_PREFIX + "*"):
        partial.unlink(missing_ok=True)


def segment_arguments(task: Task, out: Path, options: list[str]) -> list[str]:
    """The `segment` command line of one task (after `python -m SDSegSlicerLib.headless`)."""
    return ["segment", task.input, "-o", str(out / f"{task.id}{SEGMENTATION_SUFFIX}"), "--overwrite",
            *task.prompt_options, *options]


def run_task(arguments: list[str], threads: int, cancel: Callable[[], bool] = lambda: False) -> tuple[int, str, float]:
    """Run one `segment` command with this process's interpreter and environment (on a Ray node: the GPUs Ray gave
    the task), ``threads`` CPU threads: (exit status, its last error line without the command's prefix, seconds).
    Once ``cancel()`` is true the `segment` gets SIGTERM: it cancels, writes what it has and ends (exit 143)."""
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "SDSegSlicerLib.headless", *arguments], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    cancelled = False
    while True:
        try:
            _, stderr = process.communicate(timeout=STOP_POLL_S)  # a retry after a timeout loses no output
            break
        except subprocess.TimeoutExpired:
            if time.monotonic() - started > TASK_TIMEOUT_S:
                process.kill()
                process.communicate()
                raise
            if not cancelled and cancel():
                process.terminate()
                cancelled = True
    if cancelled and process.returncode < 0:  # SIGTERM came before its handlers: cancelled all the same
        return 128 - process.returncode, "", time.monotonic() - started
    errors = [COMMAND_ERROR_PREFIX.sub("", line) for line in stderr.splitlines() if "error" in line.lower()]
    if not errors and process.returncode:  # e.g. killed: it could not say why
        errors = [f"the segment process ended with exit status {process.returncode}" + (
            f" (killed by signal {-process.returncode})" if process.returncode < 0 else "")]
    return process.returncode, (errors[-1] if errors else ""), time.monotonic() - started


def summary_row(out: Path, task: Task, status: str, error: str, seconds: float | None,
                since: float | None = None) -> dict:
    """The cohort summary's row of a volume, from its own summary file when there is one (written after the time
    ``since``, when given: not one left by an earlier run of a volume that failed now)."""
    row = {"id": task.id, "input": task.input, "status": status, "error": error, "lesions": "",
           "lesion_volumes_ml": "", "variance_mean": "", "seconds": "" if seconds is None else round(seconds, 1)}
    summary = read_summary(out, task, since)
    if summary is None:
        return row
    lesions = summary.get("lesions", [])
    row.update(lesions=len(lesions), lesion_volumes_ml=";".join(f"{lesion['volume_ml']:.3f}" for lesion in lesions),
               variance_mean=round(summary.get("variance_mean", 0.0), 6))
    if seconds is None:
        row["seconds"] = summary.get("seconds", "")
    return row


def local_workers(threads_per_task: int) -> int:
    """A process pool the size of the machine: its cores / the threads each task uses."""
    return max(1, (os.cpu_count() or 1) // max(1, threads_per_task))


def run_batch(tasks: list[Task], out: Path, options: list[str], workers: int | None = None,
              ray_address: str | None = None, gpus_per_task: float = 0.0, threads_per_task: int = 1,
              stop: Callable[[], bool] = lambda: False, cancel: Callable[[], bool] = lambda: False) -> list[dict]:
    """Run every task not done yet (locally, or on Ray), write out/summary.csv, return its rows in input order.
    Once ``stop()`` is true (the caller was asked to stop: a signal) no further volume starts; the running ones go
    on to their end (on Ray the driver stops waiting for them: they end with it), and the volumes not started are
    listed "not finished (interrupted)". A volume starts only after ``stop()`` said false in the thread that starts
    it, so a stop recorded before that is never too late. Once ``cancel()`` is true too (asked again) the running
    volumes' `segment` gets SIGTERM: each cancels, writes what it has and is listed "cancelled"."""
    out.mkdir(parents=True, exist_ok=True)
    remove_partial_files(out)
    started = time.time()
    rows = {task.id: summary_row(out, task, "skipped (done before)", "", None) for task in tasks if is_done(out, task)}
    todo = [task for task in tasks if task.id not in rows]
    from tqdm import tqdm  # the command's progress bar; 3D Slicer's Python (which imports this module) has no tqdm

    progress = tqdm(total=len(tasks), initial=len(rows), desc="cohort", unit="volume", file=sys.stderr)
    results = _execute(todo, out, options, workers or local_workers(threads_per_task), ray_address, gpus_per_task,
                       threads_per_task, stop, cancel)
    try:
        for task, outcome in results:
            if outcome is None:  # not started: stop() said so
                continue
            status, error, seconds = outcome
            state = "done" if status == 0 else "cancelled" if status >= 128 else "error"
            rows[task.id] = summary_row(out, task, state, error, seconds, time.time() - seconds)
            progress.update()
    finally:
        results.close()  # an exception: the volumes not started are not started, the running ones end
        progress.close()
        for task in todo:  # stopped: a volume whose `segment` ended after the stop may be done all the same
            if task.id not in rows:
                status = "done" if is_done(out, task, started) else "not finished (interrupted)"
                rows[task.id] = summary_row(out, task, status, "", None, started)
        ordered = [rows[task.id] for task in tasks]
        # surrogateescape: a file name that is not UTF-8 is written back as the bytes it has
        with open(out / "summary.csv", "w", newline="", encoding="utf-8", errors="surrogateescape") as stream:
            writer = csv.DictWriter(stream, SUMMARY_COLUMNS)
            writer.writeheader()
            writer.writerows(ordered)
    return ordered


def _execute(tasks, out, options, workers, ray_address, gpus_per_task, threads, stop, cancel):
    """Yield (task, (exit status, error, seconds)) as the tasks finish; (task, None) for a task not started because
    ``stop()`` was true when its turn came (Ray: no task is awaited once it is true)."""
    arguments = {task.id: segment_arguments(task, out, options) for task in tasks}
    if ray_address:
        yield from _on_ray(tasks, arguments, ray_address, gpus_per_task, threads, stop)
        return

    def run_unless_stopped(task):
        return None if stop() else run_task(arguments[task.id], threads, cancel)

    pool = ThreadPoolExecutor(max_workers=workers)  # each task is a `segment` process: threads suffice here
    try:
        futures = {pool.submit(run_unless_stopped, task): task for task in tasks}
        pending = set(futures)
        while pending:  # never blocked for long: a signal handled late by Python runs in here within STOP_POLL_S
            done, pending = wait(pending, timeout=STOP_POLL_S, return_when=FIRST_COMPLETED)
            for future in done:
                yield futures[future], future.result()
    finally:  # also when the caller stops early (an exception): queued volumes are dropped, running ones awaited
        pool.shutdown(wait=True, cancel_futures=True)


def start_ray(address: str):
    """Ray, connected to ``address`` ("local": a cluster of this machine) unless it is already. ray.init installs
    its own SIGTERM handler (exit at once), so a caller that records signals connects first."""
    try:
        import ray
    except ImportError:
        raise BatchError("--ray needs Ray: pip install 'sdseg-slicer[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, log_to_driver=False)
    return ray


def _on_ray(tasks, arguments, address, gpus_per_task, threads, stop):
    """The tasks on Ray: each one a Ray task asking for ``threads`` CPUs and ``gpus_per_task`` GPUs (Ray sets
    CUDA_VISIBLE_DEVICES for it). The inputs and --out must be on storage every node sees."""
    ray = start_ray(address)
    remote = ray.remote(num_cpus=threads, num_gpus=gpus_per_task)(run_task)
    pending = {remote.remote(arguments[task.id], threads): task for task in tasks}
    while pending and not stop():  # stopped: the tasks still on the cluster end with this driver
        done, _ = ray.wait(list(pending), num_returns=1, timeout=STOP_POLL_S)
        if not done:
            continue
        task = pending.pop(done[0])
        try:
            yield task, ray.get(done[0])
        except ray.exceptions.RayError as error:
            yield task, (1, f"Ray: {type(error).__name__}: {error}".splitlines()[0], 0.0)
