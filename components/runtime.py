"""Process set-up shared by every entry point that runs TensorFlow: the CLI, distributed tuning workers."""
from __future__ import annotations

import os


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
