"""`sdseg-slicer`: segment a volume file outside 3D Slicer, with the module's own code path (WorkerClient +
SegmentationRun on a vtkMRMLScene from slicer-core), and list the installed models.

    sdseg-slicer segment INPUT -o OUT.seg.nrrd [--point R,A,S | --point-ijk I,J,K ...] [--roi I0,J0,K0,I1,J1,K1]
                         [--model NAME] [--samples 8] ...
    sdseg-slicer models [--python PATH]

Writes OUT.seg.nrrd (segments consensus, sample 1..N; `lesion L ...` for several lesions), OUT_variance.nrrd,
OUT_summary.json / .csv and OUT_preview.png, each whole or not at all, after checking that they can be written.
Ctrl-C, SIGTERM or SIGHUP cancels the job and writes what arrived (exit status 128 + the signal's number). Every
failure is one line on stderr and a non-zero exit status. VTK, MRML and SimpleITK are imported by the commands that
use them only: --help, argument errors and `models` answer at once.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .batch import VOLUME_SUFFIXES, BatchError, add_prompts, read_inputs, run_batch, start_ray
from .outputs import OutputError, check_outputs, output_paths
from .prompts import DEFAULT_STOP_AFTER_EMPTY, WHOLE_VOLUME_WARNING, lesion_lines, prompt_request
from .run import DEFAULT_SAMPLES, DEVICES, MAX_SAMPLES, SegmentationRun, format_duration, slices_text
from .remote_client import TOKEN_ENVIRONMENT_VARIABLE, RemoteWorkerClient
from .remote_server import DEFAULT_CONNECTION_TIMEOUT_S, DEFAULT_MAX_CONNECTIONS, DEFAULT_PORT, serve
from .worker_client import WorkerClient, WorkerError, default_label

DEFAULT_MAX_UPLOAD_MB = 2048
DEFAULT_WEB_PORT = 8080
EXIT_ERROR = 1
EXIT_USAGE = 2
WORKER_START_TIMEOUT_S = 300.0
COORDINATE_OPTIONS = ("--point", "--point-ijk", "--box", "--roi")  # values that may start with '-'
POLL_INTERVAL_S = 0.2
WAKEUP_PEEK_BYTES = 4096  # signal numbers a SignalRequests looks at (one byte per signal delivered)
PROGRESS_BAR_WIDTH = 30
LOG_INTERVAL_S = 1.0  # progress lines when stderr is not a terminal
CANCEL_GRACE_S = 60.0


class UsageError(Exception):
    """Bad command-line input; the message says what to do."""


def parse_roi(text: str) -> list[int]:
    """'I0,J0,K0,I1,J1,K1' (voxel indices, end exclusive) -> [i0, j0, k0, i1, j1, k1]."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 6 or any(v < 0 for v in values) or any(values[a] >= values[a + 3] for a in range(3)):
        raise argparse.ArgumentTypeError(
            f"'{text}' is not I0,J0,K0,I1,J1,K1: six voxel indices >= 0 with I0 < I1, J0 < J1, K0 < K1 "
            "(the end is exclusive)")
    return values


def parse_point(text: str) -> list[float]:
    """'a,b,c' (I,J,K or R,A,S) -> three finite numbers."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"'{text}' is not three numbers separated by commas")
    return values


def lesion_prompt(kind: str, parse_values):
    """An argparse type: the option's text -> {kind: values} (a lesion of the prompt request), so that --point,
    --point-ijk and --box fill one list in the order given: lesion 1 is the first of them on the command line."""
    def parse(text: str) -> dict:
        return {kind: parse_values(text)}
    return parse


def attach_negative_values(argv: list[str]) -> list[str]:
    """'--point -43.4,-19.9,26' -> '--point=-43.4,-19.9,26': argparse takes a value that starts with '-' for an
    option (except a plain negative number), and RAS coordinates are negative for half the body."""
    joined = []
    for token in argv:
        if joined and joined[-1] in COORDINATE_OPTIONS and re.match(r"-[\d.]", token):
            joined[-1] += "=" + token
        else:
            joined.append(token)
    return joined


def int_from(low: int, high: int | None = None):
    """An argparse type: an integer >= low (and <= high); argparse names the option in the error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"from {low} to {high}"
            raise argparse.ArgumentTypeError(f"'{text}' is not an integer {bounds}")
        return value
    return parse


positive_int = int_from(1)
non_negative_int = int_from(0)


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"'{text}' is not a number > 0")
    return value


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="sdseg-slicer", description="Diffusion-model lesion segmentation with uncertainty.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    segment = commands.add_parser("segment", help="segment a volume file or DICOM folder")
    segment.add_argument("input", help="volume (.nrrd .nhdr .nii .nii.gz .mha .mhd) or DICOM series folder")
    segment.add_argument("-o", "--output", required=True, help="output OUT.seg.nrrd (other files are named after it)")
    prompts = segment.add_argument_group(
        "prompts", "Click the lesion: --point / --point-ijk / --box (repeat for several lesions, numbered in the "
        "order given; the ROI, if given, bounds them), or a box (--roi alone). Without any (or with "
        "--whole-volume), every slice of the volume (or ROI) is segmented.")
    prompts.add_argument("--point", dest="lesions", type=lesion_prompt("point_ras", parse_point), action="append",
                         default=[], metavar="R,A,S", help="a point on a lesion, in mm (RAS, as Slicer shows it)")
    prompts.add_argument("--point-ijk", dest="lesions", type=lesion_prompt("point_ijk", parse_point),
                         action="append", default=[], metavar="I,J,K", help="a point on a lesion, in voxel indices")
    prompts.add_argument("--box", dest="lesions", type=lesion_prompt("box_ijk", parse_roi), action="append",
                         default=[], metavar="I0,J0,K0,I1,J1,K1",
                         help="a box around a lesion, IJK voxel indices, end exclusive")
    prompts.add_argument("--roi", type=parse_roi, metavar="I0,J0,K0,I1,J1,K1",
                         help="IJK voxel box, end exclusive: the lesion's box, or with --point/--box the region "
                              "they stay in")
    prompts.add_argument("--stop-after-empty", type=positive_int, default=DEFAULT_STOP_AFTER_EMPTY, metavar="K",
                         help="stop going outward after K slices in a row without lesion "
                              f"(default {DEFAULT_STOP_AFTER_EMPTY})")
    prompts.add_argument("--max-slices", type=positive_int, metavar="N", help="at most N slices per lesion")
    prompts.add_argument("--scale", type=positive_float, metavar="S",
                         help="crop scale of --point lesions, x the model's crop (default: searched on the clicked "
                              "slice among 0.5, 1, 2, 4; force it when the click finds nothing or too little)")
    prompts.add_argument("--whole-volume", action="store_true",
                         help="no prompt: segment every slice of the volume (or of the --roi), as one region")
    segment.add_argument("--model", help="model name or folder (default: the default model)")
    segment.add_argument("--samples", type=int_from(1, MAX_SAMPLES), default=DEFAULT_SAMPLES,
                         help=f"number of samples, 1 to {MAX_SAMPLES} (default {DEFAULT_SAMPLES})")
    segment.add_argument("--steps", type=positive_int, help="sampling steps (default: the model's)")
    segment.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    segment.add_argument("--device", choices=DEVICES, default="auto")
    segment.add_argument("--batch-size", type=positive_int, help="images per forward pass (default: automatic)")
    segment.add_argument("--allow-irregular-slices", action="store_true",
                         help="segment a DICOM series with missing, duplicate or unevenly spaced slices as if evenly "
                              "spaced (refused by default; the summary then says what was irregular)")
    add_worker_options(segment)
    add_threads_option(segment)
    segment.add_argument("--overwrite", action="store_true", help="replace existing output files")
    models = commands.add_parser("models", help="list the installed models")
    add_worker_options(models)
    add_threads_option(models)
    batch = commands.add_parser("batch", help="segment a cohort: one task per volume, resumable, one summary CSV")
    batch.add_argument("--inputs", required=True, help="a folder of volumes (sub-folders: DICOM series) or a CSV "
                       "with columns id, input (a relative input: relative to the CSV's folder)")
    batch.add_argument("--out", required=True, help="output folder (per volume ID_*.seg.nrrd ..., and summary.csv)")
    batch.add_argument("--prompts", help="CSV with columns input (or id), kind (point_ras, point_ijk, box_ijk), "
                       "value; a relative input is relative to this CSV's folder, not to --inputs; volumes without "
                       "a row are segmented whole")
    batch.add_argument("--ray", metavar="ADDRESS", help="run the tasks on Ray: a cluster address, 'auto' (join the "
                       "running one) or 'local' (start one here)")
    batch.add_argument("--gpus-per-task", type=float, default=0.0, help="GPUs each Ray task needs (default 0)")
    batch.add_argument("--workers", type=positive_int, help="local tasks at a time (default: cores / threads)")
    batch.add_argument("--threads-per-task", "--threads", type=positive_int, default=1,
                       help="CPU threads each task uses (default 1)")
    for option, kwargs in BATCH_SEGMENT_OPTIONS:
        batch.add_argument(option, **kwargs)
    serve = commands.add_parser("serve", help="serve the worker to other machines over HTTP (docs/protocol.md)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                       "only; any other needs a token)")
    serve.add_argument("--port", type=int_from(0, 65535), default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    serve.add_argument("--token", help=f"clients must send it (default: ${TOKEN_ENVIRONMENT_VARIABLE})")
    serve.add_argument("--python", help="Python interpreter of the worker (default: this one)")
    serve.add_argument("--max-upload-mb", type=positive_int, default=DEFAULT_MAX_UPLOAD_MB,
                       help=f"largest volume upload (default {DEFAULT_MAX_UPLOAD_MB})")
    serve.add_argument("--data-root", help="clients may also name volumes inside this folder of the server")
    add_threads_option(serve)
    serve.add_argument("--connection-timeout", type=positive_int, default=DEFAULT_CONNECTION_TIMEOUT_S, metavar="S",
                       help="close a connection idle (nothing sent or read) for S seconds "
                            f"(default {DEFAULT_CONNECTION_TIMEOUT_S})")
    serve.add_argument("--max-connections", type=positive_int, default=DEFAULT_MAX_CONNECTIONS, metavar="N",
                       help=f"connections open at once; more are refused with 503 (default {DEFAULT_MAX_CONNECTIONS})")
    web = commands.add_parser("web", help="the segmentation workflow in a browser (needs sdseg-slicer[web])")
    web.add_argument("input", nargs="?", help="volume file or DICOM series folder to open (or upload one in the page)")
    web.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                     "only; any other needs a token)")
    web.add_argument("--port", type=int_from(0, 65535), default=DEFAULT_WEB_PORT, help=f"default {DEFAULT_WEB_PORT}")
    web.add_argument("--token", help=f"browsers must present it (default: ${TOKEN_ENVIRONMENT_VARIABLE})")
    web.add_argument("--max-upload-mb", type=positive_int, default=DEFAULT_MAX_UPLOAD_MB,
                     help=f"largest volume upload (default {DEFAULT_MAX_UPLOAD_MB})")
    web.add_argument("--python", help="Python interpreter of the worker (default: this one)")
    web.add_argument("--server", metavar="URL", help="use the worker of an `sdseg-slicer serve` server instead")
    web.add_argument("--worker-token", help="that server's token")
    add_threads_option(web)
    web.add_argument("--timeout", type=positive_int, metavar="S",
                     help="stop after S seconds without an open page (default: run until stopped)")
    return parser


class ProgressBar:
    """One self-updating line on a terminal. Otherwise (a log file, a pipe) a line at each phase change (the last
    one: done, drawn full by wait_for_run) and at the first slice (when the first result is there), between them at
    most one per LOG_INTERVAL_S."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.interactive = stream.isatty()
        self._last_text, self._last_time, self._last_done = None, 0.0, 0

    def update(self, progress: dict) -> None:
        done, total = progress["done"], progress["total"]
        filled = int(PROGRESS_BAR_WIDTH * done / total) if total else 0
        if progress["phase"] == "done":  # full, also where the total was a bound (a click: "at most 25 slices")
            filled = PROGRESS_BAR_WIDTH
        if not total:  # before the worker accepted the job: nothing to count yet
            text = f"{progress['phase']} ..."
        else:
            bar = f"[{'#' * filled}{'-' * (PROGRESS_BAR_WIDTH - filled)}]"
            text = f"{progress['phase']:<14} {bar} {slices_text(progress)}"
            if progress["phase"] != "done":
                text += f"  ETA {format_duration(progress['eta_s'])}"
        if text == self._last_text:
            return
        phase_changed = self._last_text is None or not self._last_text.startswith(f"{progress['phase']:<14}")
        first_slice = done > 0 and self._last_done == 0
        now = time.monotonic()
        if self.interactive:
            self.stream.write("\r\033[K" + text)  # cleared first: a shorter line (done, no ETA) leaves nothing behind
        elif phase_changed or first_slice or now - self._last_time >= LOG_INTERVAL_S:
            self.stream.write(text + "\n")
        else:
            return
        self.stream.flush()
        self._last_text, self._last_time, self._last_done = text, now, done

    def say(self, line: str) -> None:
        """A line of its own above the bar (which is drawn again after it on a terminal)."""
        if self.interactive and self._last_text is not None:
            self.stream.write("\r\033[K" + line + "\n" + self._last_text)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.interactive and self._last_text is not None:
            self.stream.write("\n")
            self.stream.flush()


def add_worker_options(parser) -> None:
    """Where the worker runs: a local interpreter (--python), or a server (--server, --token)."""
    parser.add_argument("--python", help="Python interpreter of the worker (default: this one)")
    parser.add_argument("--server", metavar="URL", help="use the worker of an `sdseg-slicer serve` server instead")
    parser.add_argument("--token", help=f"the server's token (default: ${TOKEN_ENVIRONMENT_VARIABLE})")


def add_threads_option(parser) -> None:
    parser.add_argument("--threads", type=positive_int, help="CPU threads of the worker (default: $OMP_NUM_THREADS, "
                        "else the cores this process may use)")


def start_client(args, meanwhile=None):
    """(the started worker client: a local worker, or --server; what ``meanwhile()`` returned, else None):
    ``meanwhile`` runs while a local worker imports PyTorch (the two processes' imports at once), or once the server
    answered."""
    if args.server:
        client = RemoteWorkerClient(args.server, args.token)
        print(f"Connecting to {args.server} ...", file=sys.stderr, flush=True)
    else:
        client = WorkerClient(python_executable=args.python)
        print("Starting the worker ...", file=sys.stderr, flush=True)
    try:
        if args.server:
            client.start(WORKER_START_TIMEOUT_S)
            prepared = meanwhile() if meanwhile else None
        else:
            client.launch()
            prepared = meanwhile() if meanwhile else None
            client.wait_ready(WORKER_START_TIMEOUT_S)
    except BaseException:  # Ctrl-C while starting included: never leave a worker behind
        client.stop()
        raise
    return client, prepared


def listening_token(args) -> str | None:
    """The token a `serve` or `web` server requires: --token, else $SDSEG_TOKEN, else none."""
    return args.token or os.environ.get(TOKEN_ENVIRONMENT_VARIABLE) or None


def token_access(option: str | None, token: str | None) -> str:
    """What a `serve` server asks of its clients, for its ready line: whether they need a token, and where the token
    came from (a $SDSEG_TOKEN left in the shell would otherwise make a server meant to have none refuse clients)."""
    if token is None:
        return "no token: clients on this machine only"
    return f"clients must send the token of {'--token' if option else '$' + TOKEN_ENVIRONMENT_VARIABLE}"


def require_input(path: str) -> None:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8 in the name: ITK's readers would abort the process
        raise UsageError(f"{path.encode('utf-8', 'backslashreplace').decode()}: the file name is not valid UTF-8; "
                         "rename it") from None
    if not Path(path).exists():
        raise UsageError(f"{path}: no such file or folder; give a volume file or a DICOM series folder")


def require_worker_readable(path: str) -> None:
    """A file the worker cannot read is refused before it starts (the web app reads more types with Slicer's
    readers and sends the worker its own copy: not checked there)."""
    if Path(path).is_file() and not path.lower().endswith(VOLUME_SUFFIXES):
        raise UsageError(f"{path}: unsupported file type; give a volume file ({' '.join(VOLUME_SUFFIXES)}) or a "
                         "DICOM series folder")


def command_serve(args) -> int:
    token = listening_token(args)
    data_root = Path(args.data_root) if args.data_root else None
    if data_root is not None and not data_root.is_dir():
        raise UsageError(f"--data-root {args.data_root}: no such folder")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)  # the access log
    print("Starting the worker ...", file=sys.stderr, flush=True)

    access = token_access(args.token, token)

    def ready(address):
        print(f"Serving on http://{address[0]}:{address[1]} ({access}; Ctrl-C to stop)", file=sys.stderr, flush=True)

    try:
        serve(args.host, args.port, token, args.python, args.max_upload_mb * 2 ** 20, data_root, ready,
              args.connection_timeout, args.max_connections)
    except ValueError as error:  # a public address without a token, a port in use
        raise UsageError(str(error)) from None
    except KeyboardInterrupt as interrupt:
        print("Stopped.", file=sys.stderr)
        return exit_status_of(signal_of(interrupt))
    return 0


def command_web(args) -> int:
    try:
        quiet_vtk()
        from SDSegSlicerWeb.command import run
    except ImportError as error:
        raise UsageError(f"the web app needs trame-slicer ({error}): pip install 'sdseg-slicer[web]'") from None
    token = listening_token(args)
    if args.input:
        require_input(args.input)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("SDSegSlicerWeb").setLevel(logging.INFO)
    try:
        return run(args, token)
    except ValueError as error:  # a public address without a token, an unreadable input
        raise UsageError(str(error)) from None
    except KeyboardInterrupt as interrupt:
        print("Stopped.", file=sys.stderr)
        return exit_status_of(signal_of(interrupt))


BATCH_SEGMENT_OPTIONS = [  # passed on to each volume's `segment`
    ("--model", {"help": "model name or folder"}), ("--samples", {"type": int_from(1, MAX_SAMPLES)}),
    ("--steps", {"type": positive_int}), ("--seed", {"type": non_negative_int}),
    ("--device", {"choices": DEVICES}), ("--stop-after-empty", {"type": positive_int}),
    ("--max-slices", {"type": positive_int}), ("--server", {"metavar": "URL"}), ("--token", {}), ("--python", {}),
    ("--allow-irregular-slices", {"action": "store_true", "default": None}),
]


def command_batch(args) -> int:
    options = []
    for option, _ in BATCH_SEGMENT_OPTIONS:
        value = getattr(args, option[2:].replace("-", "_"))
        if value is not None:
            options += [option] if value is True else [option, str(value)]  # True: a flag given
    try:
        tasks = read_inputs(args.inputs, Path(args.out))
        if args.prompts:
            add_prompts(tasks, args.prompts)
        if args.ray:
            start_ray(args.ray)  # before the handlers below: ray.init installs its own for SIGTERM
        # A signal is a request (it never lands inside the process pool's bookkeeping): no further volume starts,
        # the running ones end (Ctrl-C reaches their `segment` too: it cancels and writes what it has); a second
        # signal cancels them (SIGTERM to each `segment`).
        with signals_as_requests(announce_batch_stop) as received:
            rows = run_batch(tasks, Path(args.out), options, args.workers, args.ray, args.gpus_per_task,
                             args.threads_per_task, stop=received.arrived, cancel=lambda: received.arrived(2))
    except BatchError as error:
        raise UsageError(str(error)) from None
    if received:
        raise Interrupted(received[0])
    failed = [row for row in rows if row["status"] not in ("done", "skipped (done before)")]
    print(f"{len(rows) - len(failed)} of {len(rows)} volumes done; summary: {Path(args.out) / 'summary.csv'}",
          file=sys.stderr)
    for row in failed:
        print(f"{row['id']}: {row['status']}: {row['error']}", file=sys.stderr)
    return EXIT_ERROR if failed else 0


def command_models(args) -> int:
    client, _ = start_client(args)
    try:
        hello = client.hello
    finally:
        client.stop()
    device = hello["device"] + (f" ({hello['gpu_name']})" if hello.get("gpu_name") else "")
    count = (hello.get("runtime") or {}).get("threads")  # older servers: none
    threads = f", {count} CPU thread{'' if count == 1 else 's'}" if count is not None else ""
    print(f"torch {hello['torch']}, device {device}{threads}")
    if not hello["models"]:
        print("No model installed: put a model folder in a folder listed in SDSEG_MODELS_PATH.")
    names = [f"{model['name']} {default_label(model)}".rstrip() for model in hello["models"]]
    width = max(map(len, names), default=0)
    for name, model in zip(names, hello["models"]):
        print(f"{name:<{width}}  {model['kind']:<10} {model.get('description') or ''}")
    return 0


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a scheduler, `timeout`, a closed terminal), handled as Ctrl-C (SIGINT) is."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupted(signum, frame):
    raise Interrupted(signum)


def signal_of(interrupt: KeyboardInterrupt) -> int:
    return getattr(interrupt, "signum", signal.SIGINT)


def exit_status_of(signum: int) -> int:
    """The shell's convention for a process ended by a signal: 128 + its number (Ctrl-C: 130, SIGTERM: 143)."""
    return 128 + int(signum)


@contextlib.contextmanager
def termination_as_interrupt():
    """SIGTERM and SIGHUP raise Interrupted while inside (main thread only); the previous handlers come back."""
    names = [name for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {name: signal.signal(getattr(signal, name), _interrupted) for name in names}
    try:
        yield
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)


class SignalRequests(list):
    """The signals received inside :func:`signals_as_requests`, in order. Python runs a signal's handler in the main
    thread when that thread next runs Python code, which can be late (the kernel may hand the signal to another
    thread, and a main thread blocked on a lock then hears of it only when the lock is released); ``arrived(n)``
    says at once, in any thread, that n of them were delivered: the C-level handler writes each one's number to a
    wakeup socket (signal.set_wakeup_fd) before any Python code runs, and ``arrived`` peeks at them there."""

    def __init__(self, wakeup: socket.socket | None = None, signums: tuple[int, ...] = ()):
        super().__init__()
        self._wakeup, self._signums = wakeup, frozenset(int(signum) for signum in signums)

    def arrived(self, count: int = 1) -> bool:
        if len(self) >= count or self._wakeup is None:
            return len(self) >= count
        try:
            written = self._wakeup.recv(WAKEUP_PEEK_BYTES, socket.MSG_PEEK)
        except BlockingIOError:  # nothing written yet
            return False
        return sum(number in self._signums for number in written) >= count  # other handled signals write too


def announce_batch_stop(received: SignalRequests) -> None:
    """What a signal to `batch` does, said when it is handled."""
    print("sdseg-slicer: cancelling the running volumes" if received.arrived(2) else
          "sdseg-slicer: stopping: no further volume starts, the running ones end (signal again to cancel them)",
          file=sys.stderr, flush=True)


@contextlib.contextmanager
def signals_as_requests(announce: Callable[[SignalRequests], None] | None = None):
    """While inside, Ctrl-C, SIGTERM and SIGHUP are recorded in the yielded SignalRequests instead of raising, so
    that a signal never interrupts the handling of a message (a slice that arrived is never lost) nor a process
    pool's bookkeeping; ``announce(requests)`` is called after each one is recorded. Main thread only (elsewhere
    nothing is recorded). Python runs a handler once for signals of one kind delivered before it ran: count them
    with ``arrived(n)``."""
    if threading.current_thread() is not threading.main_thread():
        yield SignalRequests()
        return
    names = [name for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]
    names = [name for name in names if signal.getsignal(getattr(signal, name)) is not signal.SIG_IGN]
    reader, writer = socket.socketpair()  # a socket, not a pipe: set_wakeup_fd takes only sockets on Windows
    for end in (reader, writer):
        end.setblocking(False)
    received = SignalRequests(reader, tuple(getattr(signal, name) for name in names))

    def record(signum, frame):
        received.append(signum)
        if announce is not None:
            announce(received)

    previous = {name: signal.signal(getattr(signal, name), record) for name in names}
    previous_wakeup_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    try:
        yield received
    finally:
        signal.set_wakeup_fd(previous_wakeup_fd)
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)
        reader.close()
        writer.close()


def wait_for_run(run, progress_bar) -> int | None:
    """Process messages until the run ends, saying the run's notes (the default model chosen, warnings about the
    input) as soon as the worker accepts the job (the summary at the end repeats them); Ctrl-C (or SIGTERM/SIGHUP)
    asks for a cancel, a second one stops waiting, also when both were delivered before Python ran its handler
    (which it then runs once: counted with ``arrived(2)``). Returns the signal that interrupted, or None."""
    cancel_deadline, noted = None, False
    with signals_as_requests() as received:
        while run.state == "running":
            state = run.process_messages(POLL_INTERVAL_S)
            if run.accepted is not None and not noted:  # the run's notes (a warning about the input) at once
                noted = True
                for line in run.note_lines:
                    progress_bar.say(line)
            if state in ("running", "done"):  # done: the full bar, also of a job that ended within one poll
                progress_bar.update(run.progress)
            if received.arrived(2) or (cancel_deadline is not None and time.monotonic() > cancel_deadline):
                break
            if received and cancel_deadline is None:
                cancel_deadline = time.monotonic() + CANCEL_GRACE_S
                progress_bar.close()
                print(f"Cancelling ({signal.Signals(received[0]).name}; again to stop at once) ...",
                      file=sys.stderr, flush=True)
                run.cancel()
    progress_bar.close()
    return received[0] if received else None


def read_input_voxels(path: str, shape_kji):
    """The input's voxels (K, J, I) for the preview background, or None if they cannot be read the same way."""
    import SimpleITK as sitk

    from .export import dicom_series_files

    try:
        if Path(path).is_dir():
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(dicom_series_files(path))
            image = reader.Execute()
        else:
            image = sitk.ReadImage(path)
    except RuntimeError:
        return None
    array = sitk.GetArrayFromImage(image)
    return array if array.shape == tuple(shape_kji) else None


WORKER_LESION_DEFINITIONS = {  # the worker's per-lesion fields the summary keeps (docs/protocol.md, `done`)
    "scale": "crop scale the lesion was segmented at, x the model's crop size",
    "scale_source": "search (chosen on the clicked slice), box (fixed by the box), forced (--scale) or whole slices",
    "scale_score": "presence x agreement of the chosen scale's samples on the clicked slice",
    "scales_tried": "each scale the search tried: the fraction of samples with a component under the click "
                    "(presence), their mean pairwise Dice (agreement), whether it touches the crop's edge, the "
                    "fraction of the crop it fills, and presence x agreement (score)",
    "stops": "how each direction (forward: increasing slice index) ended: empty (consecutive empty slices), "
             "roi_end, max_slices, length (the length rule's bound) or jump: <why> (the jump rule)",
    "found_on_clicked_slice": "false: the clicked slice's consensus is empty, what was found may not be the clicked "
                              "lesion",
}


def preview_title(input_name: str, accepted: dict, lesions: list[dict], prompted: bool) -> str:
    """The preview's title: the input, the model, the samples and each lesion's consensus volume."""
    def volume(ml):
        return f"{ml:.2f} ml" if ml > 0 else "nothing found"

    found = ("; ".join(f"lesion {n}: {volume(lesion['volume_ml'])}" for n, lesion in enumerate(lesions, start=1))
             if prompted else f"whole volume: {volume(sum(lesion['volume_ml'] for lesion in lesions))}")
    return f"{input_name}: {accepted['model']}, {accepted['samples']} samples; {found}"


def write_outputs(run, paths, args) -> dict:
    """Write every output file, the summary JSON last: it marks the result complete (a batch skips a volume whose
    summary says done); returns the statistics."""
    from .export import export_segmentation, export_volume
    from .preview import write_preview
    from .stats import segmentation_statistics, write_statistics

    export_segmentation(run.segmentation_node, paths["segmentation"])
    export_volume(run.variance_node, paths["variance"])
    statistics = segmentation_statistics(run.segmentation_node, run.variance_node)
    prompt = run.accepted.get("prompt")
    run_info = {
        "input": str(Path(args.input).resolve()), "state": run.state,
        "mode": "prompt" if prompt else "whole volume", "prompt": prompt,
        "samples_are": run.accepted.get("samples_are"),
        "slices_done": run.progress["done"], "slices_total": None if prompt else run.progress["total"],
        "model": run.accepted["model"], "device": run.accepted["device"], "samples": run.accepted["samples"],
        "steps": run.accepted["steps"], "sampler": run.accepted["sampler"], "seed": run.accepted["seed"],
        "roi_ijk": run.accepted["volume"]["roi_ijk"],
        "slice_axis": run.accepted["volume"]["slice_axis"], "seconds": round(run.elapsed_s, 3),
        "error": run.error_message,
        "warnings": ([] if prompt else [WHOLE_VOLUME_WARNING]) + list(run.accepted.get("warnings", [])),
        "outputs": {key: str(path) for key, path in paths.items()},
    }
    if run.worker_lesions:  # the worker's scale and stops, per lesion
        for lesion, worker_lesion in zip(statistics["lesions"], run.worker_lesions):
            lesion.update({key: worker_lesion[key] for key in WORKER_LESION_DEFINITIONS if key in worker_lesion})
    volume = run.accepted["volume"]
    clicks = [lesion["point_ijk"] for lesion in (prompt or {}).get("lesions", []) if "point_ijk" in lesion]
    write_preview(paths["preview"], run.segmentation_node, run.variance_node, volume["slice_axis"],
                  read_input_voxels(args.input, volume["shape_kji"]),
                  points_ijk=clicks,
                  title=preview_title(Path(args.input).name, run.accepted, statistics["lesions"], bool(prompt)))
    write_statistics(statistics, paths["summary_json"], paths["summary_csv"], extra=run_info,
                     extra_definitions={f"lesions[].{key}": text for key, text in WORKER_LESION_DEFINITIONS.items()})
    return statistics


def command_segment(args) -> int:
    require_input(args.input)
    require_worker_readable(args.input)
    lesions = args.lesions  # lesion L: the L-th --point / --point-ijk / --box
    if lesions and args.whole_volume:
        raise UsageError("--whole-volume segments every slice: leave out --point/--point-ijk/--box, or "
                         "--whole-volume")
    try:
        paths = output_paths(args.output)
        folder = paths["segmentation"].parent
        new_folders = [p for p in [folder, *folder.parents] if not p.exists()]  # made by check_outputs
        check_outputs(paths, args.output, args.input, args.overwrite)
    except OutputError as error:
        raise UsageError(str(error)) from None
    try:
        return _segment(args, lesions, paths)
    finally:
        for made in new_folders:  # those still empty: nothing was written (refused, cancelled early, failed)
            with contextlib.suppress(OSError):
                made.rmdir()


def _segment(args, lesions: list[dict], paths: dict) -> int:
    """Run the segment job of the command line and write its outputs at ``paths``; the exit status."""
    box = [{"box_ijk": args.roi}] if args.roi and not lesions and not args.whole_volume else []
    prompt = prompt_request(lesions or box, args.stop_after_empty, args.max_slices, args.scale)
    if prompt is None:
        print(WHOLE_VOLUME_WARNING, file=sys.stderr)
    job = {"volume": str(Path(args.input).resolve()), "model": args.model, "samples": args.samples,
           "steps": args.steps, "seed": args.seed, "device": args.device, "batch_size": args.batch_size,
           "roi_ijk": args.roi if lesions or prompt is None else None, "slice_axis": None, "prompt": prompt,
           "allow_irregular_slices": args.allow_irregular_slices}
    try:  # MRML and the output writers load while the worker imports PyTorch: both at once
        client, scene = start_client(args, meanwhile=scene_and_output_writers)
    except KeyboardInterrupt as interrupt:
        print("Cancelled before the worker was ready; nothing written.", file=sys.stderr)
        return exit_status_of(signal_of(interrupt))
    try:
        run = SegmentationRun(scene, client, job)
        run.start()
        interrupted = wait_for_run(run, ProgressBar())
        if run.state == "running":  # stopped waiting for a worker that does not answer: keep what arrived
            run.abandon()
    finally:
        client.stop()
    return report_run(run, paths, args, interrupted)


def report_run(run, paths, args, interrupted: int | None) -> int:
    done, total = run.progress["done"], run.progress["total"]
    if run.writer is None or run.writer.slices_received == 0:
        if run.state == "error":
            print(f"sdseg-slicer: error: {run.error_message}", file=sys.stderr)
            return EXIT_ERROR
        print("Cancelled before the first slice arrived; nothing written.", file=sys.stderr)
        return exit_status_of(interrupted) if interrupted else EXIT_ERROR
    statistics = write_outputs(run, paths, args)
    for line in lesion_lines(statistics, run.accepted.get("prompt"), run.worker_lesions):
        print(line, file=sys.stderr)
    for line in run.note_lines:
        print(line, file=sys.stderr)
    written = f"{paths['segmentation']} (+ _variance.nrrd, _summary.json, _summary.csv, _preview.png)"
    if run.state == "done":
        print(f"Done: {done} slices in {format_duration(run.elapsed_s)}. Wrote {written}", file=sys.stderr)
        return 0
    of_total = "" if run.accepted.get("prompt") else f" of {total}"
    if run.state == "cancelled":
        print(f"Cancelled after {done}{of_total} slices; wrote the partial result {written}", file=sys.stderr)
        return exit_status_of(interrupted) if interrupted else EXIT_ERROR
    print(f"sdseg-slicer: error: {run.error_message}", file=sys.stderr)
    print(f"Kept the {done}{of_total} slices that arrived: {written}", file=sys.stderr)
    return EXIT_ERROR


def quiet_vtk() -> None:
    """Import VTK with its own error prints off: every failure is reported in one line."""
    import vtk

    vtk.vtkObject.GlobalWarningDisplayOff()


def mrml_scene():
    """A new MRML scene (slicer-core, with the segmentation converter rules Slicer registers at start-up)."""
    try:
        quiet_vtk()
        import slicer
    except ImportError as error:
        raise UsageError(f"segment needs slicer-core ({error}): pip install 'sdseg-slicer[headless]'") from None

    from .segmentation_writer import ensure_converter_rules

    ensure_converter_rules()
    return slicer.vtkMRMLScene()


def scene_and_output_writers():
    """A new MRML scene, with the preview's matplotlib imported (a third of a second that would come after the
    last slice)."""
    scene = mrml_scene()
    from .preview import drawing_modules  # after slicer-core: the preview reads MRML nodes

    drawing_modules()
    return scene


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(attach_negative_values(argv))
        if getattr(args, "threads", None):
            os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the workers started from here read it (sdseg.threads)
        commands = {"models": command_models, "segment": command_segment, "serve": command_serve,
                    "batch": command_batch, "web": command_web}
        with termination_as_interrupt():
            status = commands[args.command](args)
        sys.stdout.flush()  # here, not at exit: a reader that went away is handled below
        return status
    except BrokenPipeError:  # `sdseg-slicer models | head`: the reader has what it wanted; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush must not fail again
        return EXIT_ERROR
    except UsageError as error:
        print(f"sdseg-slicer: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (WorkerError, ValueError, OSError) as error:
        print(f"sdseg-slicer: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as interrupt:
        print("sdseg-slicer: interrupted", file=sys.stderr)
        return exit_status_of(signal_of(interrupt))
    except Exception as error:  # noqa: BLE001 - users get one line, never a traceback
        print(f"sdseg-slicer: error: unexpected {type(error).__name__}: {error} (please report it)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
