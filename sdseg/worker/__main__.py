"""``python -m sdseg.worker``: the inference worker process (docs/protocol.md).

stdout carries protocol messages only: the process's file descriptor 1 is pointed at stderr, so anything a library
prints (Python or C) lands in the log, and messages go to a private duplicate of the original stdout.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

from sdseg.threads import configure_openmp
from sdseg.worker import protocol

PARENT_POLL_S = 1.0
NETWORK_CODE_LOADED = "network code loaded in"  # the log line of a worker that can take a job at full speed
GONE_GRACE_S = 1.0  # a client gone: time for the job to stop at a sampling step before the process just exits


def main() -> int:
    threads = configure_openmp()  # before torch is imported: OpenMP reads its settings when it loads
    set_before_torch = "torch" not in sys.modules
    parent = os.getppid()  # before the hello: a client may be gone (and the worker re-parented) as soon as it has it
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", newline="\n")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    logging.basicConfig(stream=sys.stderr, level=os.environ.get("SDSEG_WORKER_LOG", "INFO"),
                        format="sdseg.worker %(levelname)s %(name)s: %(message)s")
    import torch  # after the redirection: importing torch may print

    torch.set_num_threads(threads)
    runtime = {"threads": torch.get_num_threads(), "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
               "openmp_set_before_torch": set_before_torch}
    try:
        protocol_out.write(protocol.encode({**hello_message(), "runtime": runtime}))
        protocol_out.flush()
    except (OSError, ValueError) as error:  # the client closed the pipe: nobody to work for
        logging.getLogger("sdseg.worker").warning("cannot write to the client (%s); stopping", error)
        return 0
    # after the hello: the job code (SimpleITK, inference; ~0.3 CPU-s) loads while the client prepares its job
    from sdseg.worker.server import Worker

    worker = Worker(protocol_out)
    threading.Thread(target=worker.read_requests, args=(sys.stdin.buffer,), name="stdin-reader", daemon=True).start()
    threading.Thread(target=watch_parent, args=(worker, parent), name="parent-watch", daemon=True).start()
    # the network code (diffusers, ~2 CPU-s) loads while the client prepares its first job, not after it sent it
    threading.Thread(target=import_networks, name="model-imports", daemon=True).start()
    return worker.run()


def hello_message() -> dict:
    """The worker's hello: protocol version, torch and its device, the installed models (docs/protocol.md)."""
    import torch

    from sdseg import registry

    cuda = torch.cuda.is_available()
    free_mb = int(torch.cuda.mem_get_info()[0] // 2 ** 20) if cuda else None
    return protocol.hello(torch.__version__, torch.version.cuda, "cuda" if cuda else "cpu",
                          torch.cuda.get_device_name() if cuda else None, free_mb, registry.list_models())


def import_networks() -> None:
    """Import the model classes (diffusers) and log when they are in (a warm worker: its next job loads only
    weights)."""
    from sdseg.models import import_model_classes

    started = time.monotonic()
    import_model_classes()
    logging.getLogger("sdseg.worker").info("%s %.1f s", NETWORK_CODE_LOADED, time.monotonic() - started)


def watch_parent(worker, parent: int) -> None:
    """A client killed outright (SIGKILL) may leave the worker's stdin open (another process inherited the pipe):
    when the parent process is gone (the worker is re-parented), stop as at the end of input; a forward pass that
    does not end within GONE_GRACE_S (one may take minutes) is abandoned: nobody is left to receive its result."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    worker.client_gone(f"the client process {parent} is gone")
    time.sleep(GONE_GRACE_S)
    logging.getLogger("sdseg.worker").warning("a forward pass is still running for nobody: exiting now")
    exit_now(0)


def exit_now(code: int) -> None:
    """End the process once ``main`` returned: the stdin reader may still be blocked in a read (a pipe another
    process holds open), and a normal interpreter shutdown would then abort on the stdin lock (SIGABRT)."""
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
