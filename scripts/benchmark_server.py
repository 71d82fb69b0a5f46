"""Cost of the network path and gain of a cohort on Ray, measured in one run on this machine.

1. The same job through a local worker (WorkerClient: npz files in a shared folder) and through `sdseg-slicer serve`
   on loopback (RemoteWorkerClient: volume uploaded, slices inline in the HTTP stream): first-slice latency and
   slices/s, each the median of --repeats runs after one warm-up (the model is then cached by both workers).
   Prints server / local ratios.
2. `sdseg-slicer batch` over --cohort copies of the sample volume on a local Ray cluster with 1 then 2 CPUs (one
   task per CPU, one thread each): volumes per minute and the 2 / 1 ratio.

    python scripts/benchmark_server.py --model sdseg-small --samples 8 --repeats 3 --cohort 4
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from SDSegSlicerLib.batch import read_inputs, run_batch
from SDSegSlicerLib.remote_client import RemoteWorkerClient
from SDSegSlicerLib.worker_client import TERMINAL_MESSAGES, WorkerClient
from sdseg.evaluation import prompt_point
from sdseg.volume_io import read_volume

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "Resources" / "SampleData"
SAMPLE_VOLUME = SAMPLE_DIR / "sample.nrrd"


def timed_job(client, job: dict) -> tuple[float, float]:
    """(seconds to the first slice, slices per second) of one job, from submit to its last message."""
    started = time.perf_counter()
    job_id = client.submit(dict(job))
    first, slices = None, 0
    while True:
        for message in client.poll(0.01):
            if message.get("job_id") != job_id:
                continue
            if message["type"] == "slice":
                first = time.perf_counter() - started if first is None else first
                slices += 1
            elif message["type"] in TERMINAL_MESSAGES:
                if message["type"] != "done":
                    raise SystemExit(f"the job ended with {message}")
                client.discard_job(job_id)
                return first, slices / (time.perf_counter() - started)


def start_server(threads: int) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "SDSegSlicerLib.headless", "serve", "--port", "0"],
                               stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    for line in process.stderr:
        match = re.search(r"Serving on (http://\S+)", line)
        if match:
            threading.Thread(target=process.stderr.read, daemon=True).start()  # its access log, unread
            return process, match.group(1)
    raise SystemExit("the server did not start")


def network_cost(job: dict, repeats: int, threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the local worker inherits it
    local = WorkerClient()
    local.start(300)
    server, url = start_server(threads)
    remote = RemoteWorkerClient(url)
    remote.start()
    try:
        results = {}
        for name, client in (("local worker", local), ("server (loopback)", remote)):
            timed_job(client, job)  # warm-up: loads the model into that worker's cache
            runs = [timed_job(client, job) for _ in range(repeats)]
            results[name] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
    finally:
        remote.stop()
        local.stop()
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    print(f"{'path':<20} {'first slice s':>14} {'slices/s':>9}")
    for name, (first, rate) in results.items():
        print(f"{name:<20} {first:>14.3f} {rate:>9.2f}")
    (local_first, local_rate), (remote_first, remote_rate) = results.values()
    print(f"server / local: first-slice latency x{remote_first / local_first:.2f}, "
          f"throughput x{remote_rate / local_rate:.2f}\n")


def cohort_throughput(count: int, options: list[str]) -> None:
    import ray

    with tempfile.TemporaryDirectory() as folder:
        cohort = Path(folder) / "cohort"
        cohort.mkdir()
        for index in range(count):
            shutil.copy(SAMPLE_VOLUME, cohort / f"case{index:03d}.nrrd")
        rates = {}
        for cpus in (1, 2):
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
            try:
                started = time.perf_counter()
                out = Path(folder) / f"out{cpus}"
                rows = run_batch(read_inputs(str(cohort), out), out, options, ray_address="local")
                seconds = time.perf_counter() - started
            finally:
                ray.shutdown()
            failed = [row for row in rows if row["status"] != "done"]
            if failed:
                raise SystemExit(f"cohort run failed: {failed[0]}")
            rates[cpus] = count / seconds * 60
            print(f"Ray, {cpus} worker(s): {count} volumes in {seconds:.1f} s = {rates[cpus]:.2f} volumes/min")
        print(f"2 / 1 Ray workers: throughput x{rates[2] / rates[1]:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sdseg-small")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of each worker (default 2)")
    parser.add_argument("--cohort", type=int, default=4, help="volumes in the Ray cohort (0: skip that part)")
    parser.add_argument("--whole-volume", action="store_true", help="every slice instead of the click")
    args = parser.parse_args(argv)
    point = prompt_point(read_volume(SAMPLE_DIR / "sample_label.nrrd").array_kji > 0)  # the tumour centre
    point_text = ",".join(f"{v:.2f}" for v in point)
    prompt = None if args.whole_volume else {"lesions": [{"point_ijk": [float(v) for v in point]}]}
    job = {"volume": str(SAMPLE_VOLUME), "model": args.model, "samples": args.samples, "device": "cpu",
           "prompt": prompt}
    print(f"{args.model}, N={args.samples}, {'whole volume' if prompt is None else 'click ' + point_text}, "
          f"{args.threads} threads per worker, {os.cpu_count()} cores")
    network_cost(job, args.repeats, args.threads)
    if args.cohort:
        options = ["--model", args.model, "--samples", str(args.samples), "--device", "cpu"]
        cohort_throughput(args.cohort, options + ([] if prompt is None else ["--point-ijk", point_text]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
