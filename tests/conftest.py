"""Shared fixtures: tiny generated datasets and params files; nothing is downloaded."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

REPO = Path(__file__).resolve().parents[1]
FFX = Path(sys.executable).parent / "ffx"  # the installed `ffx` entry point
COLOURS = {"blue": (40, 60, 200), "green": (40, 180, 60), "red": (210, 40, 40)}


def make_image(path: Path, colour, size: tuple[int, int], seed: int, mode: str = "RGB") -> None:
    """A noisy image dominated by `colour`, with a bright square at a random place."""
    rng = np.random.default_rng(seed)
    width, height = size
    pixels = np.clip(np.array(colour) + rng.normal(0, 35, (height, width, 3)), 0, 255).astype(np.uint8)
    side = max(1, min(width, height) // 3)
    top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
    pixels[top:top + side, left:left + side] = 255 - np.array(colour)
    image = Image.fromarray(pixels)
    if mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def make_dataset(root: Path, classes=("blue", "red"), per_split=None) -> Path:
    """SPLIT/CLASS/ images of mixed sizes, JPEG and PNG, one grayscale per split and class."""
    per_split = per_split or {"train": 12, "valid": 6, "test": 6}
    seed = 0
    for split, count in per_split.items():
        for name in classes:
            for index in range(count):
                seed += 1
                size = (int(20 + (index * 7) % 40), int(18 + (index * 11) % 45))
                suffix = ".png" if index % 3 == 0 else ".jpg"
                mode = "L" if index == 1 else "RGB"
                make_image(root / split / name / f"{name}_{index:02d}{suffix}", COLOURS[name], size, seed, mode)
    return root


def write_params(folder: Path, **sections) -> Path:
    """A complete params.yaml (as DVC needs) for tiny, fast runs; keyword arguments override keys per section."""
    from components.config import write_params as write_complete_params

    fast = {
        "data": {"root": "data"},
        "backbone": {"name": "vgg19", "weights": "none", "input_size": 32},
        "extract": {"batch_size": 8, "precision": "float32"},  # the same features on every machine
        "tuner": {"max_trials": 3, "executions_per_trial": 1},
        "train": {"epochs": 2, "batch_size": 8},
    }
    return write_complete_params(folder / "params.yaml", fast, sections)


@pytest.fixture
def project(tmp_path) -> Path:
    """A folder with a tiny two-class dataset under data/ and a fast params.yaml."""
    make_dataset(tmp_path / "data")
    write_params(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def extracted(tmp_path_factory):
    """The `project` dataset and params with train/valid/test features extracted once per session (and the
    feature cache filled); tests only read it. `results`: what extract_stage returned."""
    from types import SimpleNamespace

    from components.config import load_config
    from components.stages.extract import extract_stage

    root = tmp_path_factory.mktemp("extracted")
    make_dataset(root / "data")
    config = load_config(write_params(root))
    return SimpleNamespace(root=root, config=config, results=extract_stage(config))


@pytest.fixture
def extracted_project(extracted, tmp_path) -> Path:
    """A copy of `extracted` to change at will: the `project` folder with its features and feature cache."""
    import shutil

    return shutil.copytree(extracted.root, tmp_path / "project", symlinks=True)


@pytest.fixture(scope="session")
def tiny_run(extracted, tmp_path_factory):
    """extract -> tune (3 trials) -> evaluate once per session on a tiny two-class dataset; tests only read it."""
    import shutil
    from types import SimpleNamespace

    from components.config import load_config
    from components.stages.evaluate import evaluate_stage
    from components.stages.tune import tune_stage

    root = shutil.copytree(extracted.root, tmp_path_factory.mktemp("tiny_run") / "project", symlinks=True)
    config = load_config(root / "params.yaml")
    search = tune_stage(config)
    evaluation = evaluate_stage(config, command="ffx evaluate --params params.yaml")
    return SimpleNamespace(root=root, config=config, search=search, evaluation=evaluation)


def run_ffx(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`ffx ARGS` run from `cwd` in this process: ffx.cli.main, the installed entry point's function, inside Typer's
    CliRunner isolation (captured stdout and stderr); an FFXError becomes one `error:` line and exit code 2."""
    from typer.testing import CliRunner

    from ffx.cli import main

    previous_cwd, previous_argv = os.getcwd(), sys.argv
    with CliRunner().isolation() as (stdout, stderr, _):
        os.chdir(cwd)
        sys.argv = ["ffx", *args]
        try:
            main()
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        finally:
            os.chdir(previous_cwd)
            sys.argv = previous_argv
            sys.stdout.flush()
            sys.stderr.flush()
        out, err = stdout.getvalue().decode(), stderr.getvalue().decode()
    return subprocess.CompletedProcess(["ffx", *args], code, out, err)


def ffx_process(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`ffx ARGS` as a user runs it: the installed command in its own process."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([str(FFX), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit code 2, no traceback, exactly one `error:` line holding every fragment."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, process, timeout: float = 120) -> None:
    """Poll `url` until it answers 200; fail if `process` (the server) exits or time runs out."""
    import time

    import httpx

    deadline = time.time() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.time() > deadline or process.poll() is not None:
            raise RuntimeError(f"{url} did not come up")
        time.sleep(1)


def stop_process_group(process: subprocess.Popen, grace: float = 30) -> None:
    """End the process group we started (a server's workers, Chromium's renderers) and reap it."""
    import signal

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium binary for browser checks. Missing: skipped on a contributor's machine, an error under CI=true."""
    import shutil

    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        message = "browser check needs Chromium (Debian: apt-get install -y chromium; .ci/run installs it)"
        if _in_ci():
            pytest.fail(f"CI=true and {message}: browser checks never skip in CI", pytrace=False)
        pytest.skip(message)
    return found


def page_text(chromium: str, url: str, profile: Path, expected: list[str], tries: int = 3) -> tuple[str, str]:
    """(DOM, visible text) of `url` in headless Chromium after its scripts ran (`--dump-dom`), with a new empty
    profile per try; retried while an expected string is still missing (a loaded machine renders slowly)."""
    import re

    dom = text = ""
    for attempt in range(tries):
        browser = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}-{attempt}",
             "--window-size=1600,1000", "--virtual-time-budget=20000", "--dump-dom", url],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        try:
            dom, _ = browser.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            dom = ""
        finally:
            stop_process_group(browser)
        text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.S)
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))
        if all(item in text for item in expected):
            break
    return dom, text


FINETUNE_PARAMS = {  # tiny data, random weights: at a constant 1e-6 the top block keeps the head's accuracy on the 4
    "tuner": {"objective": "val_accuracy"},  # held-out valid images: a tie, which keeps the fine-tuned model
    "finetune": {"enabled": True, "epochs": 2, "learning_rate": 0.000001,
                 "ema_momentum": 0, "batch_size": 8},  # no moving average: a few steps an epoch barely leave the start
}


@pytest.fixture(scope="session")
def finetuned_run(extracted, tmp_path_factory):
    """extract -> tune -> finetune (fine-tuned kept) -> evaluate once per session; tests only read it."""
    import shutil
    from types import SimpleNamespace

    from components.config import load_config
    from components.stages.evaluate import evaluate_stage
    from components.stages.finetune import finetune_stage
    from components.stages.tune import tune_stage

    root = shutil.copytree(extracted.root, tmp_path_factory.mktemp("finetuned_run") / "project", symlinks=True)
    config = load_config(write_params(root, **FINETUNE_PARAMS))
    search = tune_stage(config)
    decision = finetune_stage(config)
    evaluation = evaluate_stage(config, command="ffx evaluate --params params.yaml")
    return SimpleNamespace(root=root, config=config, search=search, decision=decision, evaluation=evaluation)


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """`prefect server start` with its UI on loopback and its own home; stopped at the end of the module."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_API_URL=url, PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_UI_ENABLED="true")
    prefect = Path(sys.executable).parent / "prefect"
    server = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_http(f"{url}/health", server)
        yield {"url": url, "ui": f"http://127.0.0.1:{port}", "env": {"PREFECT_HOME": str(home), "PREFECT_API_URL": url}}
    finally:
        stop_process_group(server)
    assert server.returncode is not None  # the server is down
