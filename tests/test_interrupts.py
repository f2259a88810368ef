"""`ffx extract` and `ffx tune` killed with SIGKILL mid-way, then run again."""
import fcntl
import json
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import FFX, ffx_process, make_dataset, write_params
from mlflow.tracking import MlflowClient

from components.config import load_config
from components.errors import FFXError
from components.features.store import read_features
from components.stages.extract import extract_stage
from components.tracking import tracking_uri

pytestmark = pytest.mark.e2e
GIVE_UP_S = 300  # a safety net against a hung child, not a timing assertion


def start_ffx(project: Path, *args: str, terminal: bool = False):
    """`ffx ARGS` in the background; with `terminal`, stderr is a pseudo-terminal so progress bars are drawn."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    if not terminal:
        return subprocess.Popen([str(FFX), *args], cwd=project, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL), None
    reader, writer = pty.openpty()
    fcntl.ioctl(writer, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # tqdm draws nothing at width 0
    process = subprocess.Popen([str(FFX), *args], cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=writer)
    os.close(writer)
    return process, reader


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait()


def wait_for_progress(process, terminal: int, split: str) -> int:
    """Images done in `split` as the progress bar shows them, once at least one batch is flushed, mid-split."""
    seen, deadline = "", time.monotonic() + GIVE_UP_S
    while time.monotonic() < deadline and process.poll() is None:
        if select.select([terminal], [], [], 0.05)[0]:
            try:
                seen += os.read(terminal, 65536).decode(errors="replace")
            except OSError:
                break
            counts = re.findall(rf"extract {split}:[^\r\n]*?(\d+)/(\d+)", seen)
            if counts:
                done, total = map(int, counts[-1])
                if 0 < done < total:
                    return done
    raise AssertionError(f"no mid-split progress seen for {split}; output:\n{seen[-2000:]}")


def test_extraction_killed_mid_split_resumes_without_redoing_batches_and_gives_identical_features(tmp_path):
    project = tmp_path / "killed"
    make_dataset(project / "data", per_split={"train": 20, "valid": 2, "test": 2})
    write_params(project, backbone={"input_size": 64}, extract={"batch_size": 2})
    reference = tmp_path / "uninterrupted"
    shutil.copytree(project, reference)

    process, terminal = start_ffx(project, "extract", terminal=True)
    try:
        done_before_kill = wait_for_progress(process, terminal, "train")
    finally:
        kill(process)
        os.close(terminal)
    train = project / "features" / "train.h5"
    assert not train.exists()  # no truncated file where a later stage would read it
    with pytest.raises(FFXError, match="feature file not found"):
        read_features(train)
    (cache,) = (project / ".ffx" / "feature-cache").glob("*.h5")
    with h5py.File(cache, "r") as handle:
        flushed = int(handle.attrs["rows"])  # rows the killed run flushed
    assert done_before_kill <= flushed < 40

    resumed = ffx_process(project, "extract")
    assert resumed.returncode == 0, resumed.stderr
    computed = int(re.search(r"train: 40 images -> .*?\((\d+) computed", resumed.stderr).group(1))
    assert computed == 40 - flushed  # exactly the rows flushed before the kill were not redone

    extract_stage(load_config(reference / "params.yaml"))
    for split in ("train", "valid", "test"):
        got = read_features(project / "features" / f"{split}.h5")
        want = read_features(reference / "features" / f"{split}.h5")
        assert got.features.tobytes() == want.features.tobytes(), split  # bit for bit
        assert got.paths == want.paths and np.array_equal(got.labels, want.labels)


def trial_states(tuner_dir: Path) -> dict[str, str]:
    """trial_id -> KerasTuner status, from the trial files (a file being written is skipped this time)."""
    states = {}
    for path in tuner_dir.glob("search-*/trial_*/trial.json"):
        try:
            trial = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        states[trial["trial_id"]] = trial["status"]
    return states


def stop_mid_search(process, tuner_dir: Path) -> dict[str, str]:
    """Freeze the process when a trial has completed and a later one is running; return the frozen states."""
    deadline = time.monotonic() + GIVE_UP_S
    while time.monotonic() < deadline and process.poll() is None:
        states = trial_states(tuner_dir)
        if "COMPLETED" in states.values() and "RUNNING" in states.values():
            process.send_signal(signal.SIGSTOP)
            frozen = trial_states(tuner_dir)
            if "COMPLETED" in frozen.values() and "RUNNING" in frozen.values():
                return frozen
            process.send_signal(signal.SIGCONT)  # moved on between the two looks: try again
        time.sleep(0.05)
    raise AssertionError(f"tuning never had a completed and a running trial at once: {trial_states(tuner_dir)}")


def test_tuning_killed_mid_search_continues_the_same_search_and_mlflow_runs(tmp_path):
    make_dataset(tmp_path / "data")
    write_params(tmp_path, tuner={"algorithm": "random", "max_trials": 3, "executions_per_trial": 1},
                 train={"epochs": 20, "batch_size": 8})
    config = load_config(tmp_path / "params.yaml")
    extract_stage(config)

    process, _ = start_ffx(tmp_path, "tune")
    try:
        frozen = stop_mid_search(process, config.tuner.directory)
    finally:
        kill(process)
    client = MlflowClient(tracking_uri(config))
    experiment_id = client.get_experiment_by_name(config.mlflow.experiment).experiment_id
    (parent,) = client.search_runs([experiment_id], "tags.ffx_kind = 'search'")
    assert parent.info.status == "RUNNING"  # what the kill left behind
    runs_before = {r.data.tags["ffx_trial_id"]: r for r in
                   client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")}
    # Trials finished for the oracle and in MLflow alike; with trials trained together the kill can also fall
    # between the two records of a trial's end, which the resumed search closes as FINISHED (checked below).
    finished_before = {t for t, status in frozen.items()
                       if status == "COMPLETED" and runs_before[t].info.status == "FINISHED"}

    resumed = ffx_process(tmp_path, "tune")
    assert resumed.returncode == 0, resumed.stderr
    rerun_ids = set(re.findall(r"^trial \d+/\d+ \((\w+)\)", resumed.stderr, re.M))
    assert rerun_ids and not rerun_ids & finished_before  # finished trials were not run again

    parents = client.search_runs([experiment_id], "tags.ffx_kind = 'search'")
    assert [p.info.run_id for p in parents] == [parent.info.run_id]
    assert parents[0].info.status == "FINISHED"
    trials = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    trial_ids = [r.data.tags["ffx_trial_id"] for r in trials]
    assert sorted(trial_ids) == sorted(set(trial_ids)) and len(trial_ids) == 3  # one run per trial
    assert {r.info.status for r in trials} == {"FINISHED"}  # nothing left RUNNING or KILLED
    for trial_id in finished_before:
        after = next(r for r in trials if r.data.tags["ffx_trial_id"] == trial_id)
        assert after.info.run_id == runs_before[trial_id].info.run_id
        assert after.info.end_time == runs_before[trial_id].info.end_time


def read_until_exit(process, terminal: int) -> str:
    """What the process writes to its terminal until it exits."""
    seen, deadline = "", time.monotonic() + GIVE_UP_S
    while time.monotonic() < deadline:
        if select.select([terminal], [], [], 0.1)[0]:
            try:
                chunk = os.read(terminal, 65536)
            except OSError:  # the other end closed: the process is gone
                break
            if not chunk:
                break
            seen += chunk.decode(errors="replace")
        elif process.poll() is not None:
            break
    process.wait(timeout=GIVE_UP_S)
    return seen


STOPPED_LINE = "stopped by SIGTERM; run the same command again to resume"


def test_extraction_stopped_by_sigterm_says_how_to_resume_and_the_next_run_resumes(tmp_path):
    make_dataset(tmp_path / "data", per_split={"train": 20, "valid": 2, "test": 2})
    write_params(tmp_path, backbone={"input_size": 64}, extract={"batch_size": 2})

    process, terminal = start_ffx(tmp_path, "extract", terminal=True)
    try:
        wait_for_progress(process, terminal, "train")
        process.send_signal(signal.SIGTERM)
        output = read_until_exit(process, terminal)
    finally:
        if process.poll() is None:
            kill(process)
        os.close(terminal)
    assert process.returncode == 143, output
    assert "Traceback" not in output, output
    assert output.rstrip().splitlines()[-1].strip() == STOPPED_LINE, output
    assert not (tmp_path / "features" / "train.h5").exists()  # the write in progress was dropped
    assert (tmp_path / "features" / "train.h5.partial").exists() or not list((tmp_path / "features").glob("*.h5"))
    (cache,) = (tmp_path / ".ffx" / "feature-cache").glob("*.h5")
    with h5py.File(cache, "r") as handle:
        flushed = int(handle.attrs["rows"])
    assert 0 < flushed < 40

    resumed = ffx_process(tmp_path, "extract")
    assert resumed.returncode == 0, resumed.stderr
    computed = int(re.search(r"train: 40 images -> .*?\((\d+) computed", resumed.stderr).group(1))
    assert computed == 40 - flushed  # the rows flushed before SIGTERM were not redone


def test_tuning_stopped_by_sigterm_closes_its_runs_killed_and_the_next_run_finishes_the_search(tmp_path):
    make_dataset(tmp_path / "data")
    write_params(tmp_path, tuner={"algorithm": "random", "max_trials": 3, "executions_per_trial": 1},
                 train={"epochs": 20, "batch_size": 8})
    config = load_config(tmp_path / "params.yaml")
    extract_stage(config)

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.Popen([str(FFX), "tune"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        frozen = stop_mid_search(process, config.tuner.directory)
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGCONT)
        _, stderr = process.communicate(timeout=GIVE_UP_S)
    finally:
        if process.poll() is None:
            kill(process)
    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr, stderr
    assert stderr.rstrip().splitlines()[-1] == STOPPED_LINE, stderr

    client = MlflowClient(tracking_uri(config))
    experiment_id = client.get_experiment_by_name(config.mlflow.experiment).experiment_id
    (parent,) = client.search_runs([experiment_id], "tags.ffx_kind = 'search'")
    assert parent.info.status == "KILLED"
    stopped = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert "RUNNING" not in {r.info.status for r in stopped}  # every trial run closed
    assert "KILLED" in {r.info.status for r in stopped}  # the one in training when SIGTERM came
    assert "RUNNING" in frozen.values()

    resumed = ffx_process(tmp_path, "tune")
    assert resumed.returncode == 0, resumed.stderr
    (after,) = client.search_runs([experiment_id], "tags.ffx_kind = 'search'")
    assert after.info.run_id == parent.info.run_id and after.info.status == "FINISHED"
    trials = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    trial_ids = [r.data.tags["ffx_trial_id"] for r in trials]
    assert sorted(trial_ids) == sorted(set(trial_ids)) and len(trial_ids) == 3  # none lost or doubled
    assert {r.info.status for r in trials} == {"FINISHED"}
