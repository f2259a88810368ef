"""KerasTuner's distributed mode: a chief oracle and worker processes, each started through the entry point
`python -m components.search.worker`, which joins the search's MLflow parent run and runs trials."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

from components.config import Config
from components.errors import FFXError

WORKER_MODULE = "components.search.worker"  # the entry point of every chief and worker process


def distributed_role() -> str:
    """single | chief | worker, from KerasTuner's own environment variables."""
    tuner_id = os.environ.get("KERASTUNER_TUNER_ID")
    if not tuner_id or "KERASTUNER_ORACLE_IP" not in os.environ:
        return "single"
    return "chief" if tuner_id == "chief" else "worker"


def share_cores_among_workers(workers: int) -> None:
    """A distributed worker's TensorFlow uses its share of this machine's cores. A small dense head gains nothing
    from a second thread (per-op overhead dominates), so parallel trials are where more cores pay; without a limit
    each worker would spread over every core and they would contend."""
    import tensorflow as tf

    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already started in this process: its thread pools are fixed
        print(f"warning: TensorFlow had already started in this process: it keeps its thread pools, not "
              f"{threads} thread(s) per worker", file=sys.stderr)


def run_tuner_processes(config: Config, show_progress: bool) -> None:
    """A chief oracle and tuner.workers worker processes on this machine, waited for. Each runs this module with
    KERASTUNER_TUNER_ID / KERASTUNER_ORACLE_IP / KERASTUNER_ORACLE_PORT set and the same params and overrides; the
    workers take trials from the chief and log each one under the parent run."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", WORKER_MODULE, "--params", str(config.source)]
    for override in config.overrides:
        command += ["--set", override]
    base = dict(os.environ, KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=str(port))
    # Their standard output is KerasTuner's alone (it prints a conditional hyperparameter's value on every
    # request); errors and progress lines are on standard error.
    chief = subprocess.Popen(command, env=dict(base, KERASTUNER_TUNER_ID="chief"), stdout=subprocess.DEVNULL)
    worker_command = command + (["--progress"] if show_progress else [])
    crew = [subprocess.Popen(worker_command, env=dict(base, KERASTUNER_TUNER_ID=f"tuner{i}"), stdout=subprocess.DEVNULL)
            for i in range(config.tuner.workers)]
    try:
        codes = [process.wait() for process in crew]
        chief_code = chief.wait(timeout=300) if not any(codes) else None
    finally:
        # Stopped (SIGTERM, Ctrl-C) or failed: each process left gets SIGTERM at once, workers before the chief
        # that hands them trials; a worker closes its trials' MLflow runs KILLED (components.search.worker).
        left = [process for process in [*crew, chief] if process.poll() is None]
        for process in left:
            process.terminate()
        for process in left:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    if any(codes) or chief_code:
        raise FFXError(f"distributed tuning failed: worker exit codes {codes}, chief {chief_code} "
                       "(their errors are printed above)")
