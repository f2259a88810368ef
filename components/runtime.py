"""The machine a process runs on: which precision is native there, TensorFlow's start-up kept quiet, and SIGTERM
turned into a clean stop."""
from __future__ import annotations

import functools
import importlib.util
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from components.errors import Terminated
from components.files import user_error

TERMINATED_EXIT = 128 + signal.SIGTERM  # the shell's code for a process ended by SIGTERM
NATIVE_BFLOAT16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})  # /proc/cpuinfo flags of x86 bfloat16 arithmetic


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        return frozenset(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return frozenset()


@functools.lru_cache(maxsize=1)
def gpu_visible() -> bool:
    """A GPU TensorFlow can use, judged without importing TensorFlow (params are checked before it loads, and a
    probe would print its start-up lines): an NVIDIA GPU under the driver, CUDA not hidden, and TensorFlow's CUDA
    libraries installed (`pip install tensorflow[and-cuda]`: the nvidia-cudnn wheel)."""
    driver = Path("/proc/driver/nvidia/gpus")
    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1") or not driver.is_dir() or not any(driver.iterdir()):
        return False
    return importlib.util.find_spec("nvidia.cudnn") is not None


def resolve_precision(requested: str, flags: frozenset[str] | None = None, gpu: bool | None = None) -> str:
    """`auto`: bfloat16 where it is native — a CPU with AMX or AVX512-BF16, or a GPU — and float32 elsewhere,
    where bfloat16 is emulated and slower. Other values stand as they are."""
    if requested != "auto":
        return requested
    if NATIVE_BFLOAT16_FLAGS & (cpu_flags() if flags is None else flags):
        return "bfloat16"
    return "bfloat16" if (gpu_visible() if gpu is None else gpu) else "float32"


def quiet_tensorflow(debug: bool = False) -> None:
    """Import TensorFlow with its C++ start-up lines (oneDNN, cudart, absl, cuInit) kept off the terminal.

    They are written straight to file descriptor 2 before TF_CPP_MIN_LOG_LEVEL or any Python logging setting
    applies, so the import and the device probe run with that descriptor pointed at /dev/null. With `debug`
    everything is shown.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if debug:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # ffx prints its own line for what MLflow logs
    import logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notices would drown progress lines
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            import tensorflow as tf

            tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def stop_cleanly_on_sigterm() -> None:
    """SIGTERM (a scheduler, `docker stop`, `kill`, the parent of a search's worker) raises Terminated in this
    process's main thread, as Ctrl-C raises KeyboardInterrupt, so that the same clean-up runs: the write in progress
    dropped or finished, MLflow runs closed KILLED. Called by a process's entry point (`ffx`, a search worker). A
    second SIGTERM during that clean-up ends the process at once. A process forked from this one (a multiprocessing
    pool's worker, which its pool ends with SIGTERM) inherits the handler: it dies as it would without it."""
    owner = os.getpid()

    def terminate(signum, frame) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if os.getpid() != owner:
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated()

    signal.signal(signal.SIGTERM, terminate)


def run_entry(main: Callable[[], object], stopped: str, debug: Callable[[], bool] = lambda: False) -> None:
    """A process's entry point (`ffx`, a search worker) around `main`: SIGTERM stops it cleanly (`stopped` printed,
    exit 143); bad input or a full disk in any writer is one `error:` line, exit 2 (files.user_error); anything else
    is a bug and keeps its traceback, as everything does when `debug()` says so."""
    stop_cleanly_on_sigterm()
    try:
        main()
    except Terminated:
        print(stopped, file=sys.stderr)
        sys.exit(TERMINATED_EXIT)
    except Exception as exc:
        error = user_error(exc)
        if error is None or debug():
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
