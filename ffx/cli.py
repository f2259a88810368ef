"""`ffx` command line: parses options, calls components, prints results. No pipeline logic here."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fast feature extraction: extract backbone features once, tune a dense head, predict.")

ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="params file (every knob lives here)")]
SetOption = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="override a param: KEY=VALUE")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="no progress output")]


class State:
    debug = False
    tensorflow = False  # the command runs TensorFlow: imported quietly once its params are read


TENSORFLOW_COMMANDS = {"extract", "tune", "evaluate", "predict", "pipeline", "serve"}


@app.callback()
def _main(ctx: typer.Context,
          debug: Annotated[bool, typer.Option("--debug", help="show tracebacks and TensorFlow's own log")] = False):
    State.debug = debug
    State.tensorflow = ctx.invoked_subcommand in TENSORFLOW_COMMANDS


def _config(params: Path, overrides: list[str] | None):
    from components.config import load_config

    config = load_config(params, overrides or [])  # a params error shows at once, before TensorFlow loads
    if State.tensorflow:
        from components.runtime import quiet_tensorflow

        quiet_tensorflow(State.debug)
    return config


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        typer.echo(message, err=True)


class _ProgressBars:
    """A tqdm bar per split with images/s and ETA; silent under --quiet or when stderr is not a terminal. Called
    with (split, total) it gives the split's progress callback; `close()` ends any bar an error left open, so that
    the error's line is drawn after it, not above a bar redrawn at exit."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.interactive = sys.stderr.isatty() and not quiet
        self.bars = []

    def __call__(self, split: str, total: int):
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"extract {split}", unit="img", disable=not self.interactive, leave=True)
        self.bars.append(bar)
        started = time.perf_counter()
        done = [0]

        def advance(count: int) -> None:
            bar.update(count)
            done[0] += count
            if done[0] >= total:
                bar.close()
                if not self.interactive:
                    seconds = time.perf_counter() - started
                    _say(self.quiet, f"extract {split}: {total} images in {seconds:.1f}s "
                                     f"({total / max(seconds, 1e-9):.1f} img/s)")
        return advance

    def close(self) -> None:
        for bar in self.bars:
            bar.close()


@app.command()
def extract(params: ParamsOption = Path("params.yaml"), set_: SetOption = None, quiet: QuietOption = False):
    """Run every image of train/valid/test once through the backbone; write features/SPLIT.h5."""
    from components.stages.extract import extract_stage
    from components.tracking import check_tracking_server

    config = _config(params, set_)
    check_tracking_server(config)  # the tune stage needs it: find a dead server before the backbone work
    bars = _ProgressBars(quiet)
    try:
        results = extract_stage(config, progress_for=bars)
    finally:
        bars.close()
    for result in results.values():
        reused = result.count - result.computed
        note = "up to date" if result.cached else f"{result.computed} computed, {reused} from cache"
        skipped = f", {len(result.skipped)} bad image(s) skipped" if result.skipped else ""
        _say(quiet, f"{result.split}: {result.count} images -> {result.path} ({note}, {result.seconds:.1f}s{skipped})")


@app.command()
def tune(params: ParamsOption = Path("params.yaml"), set_: SetOption = None, quiet: QuietOption = False,
         workers: Annotated[Optional[int], typer.Option(help="KerasTuner distributed mode: a chief and N worker "
                                                              "processes on 127.0.0.1 (tuner.workers)")] = None):
    """Search the dense head's hyperparameters (each trial logged to MLflow); save the best head."""
    overrides = list(set_ or []) + ([f"tuner.workers={workers}"] if workers is not None else [])
    config = _config(params, overrides)  # a params error shows at once, before the slow imports below
    from components.search.trial_logging import progress_line
    from components.stages.tune import tune_stage
    from components.ui_links import experiment_link, run_link

    def started(experiment_id: str, run_id: str) -> None:
        # Printed when the search starts, once (MLflow's own per-run links are off: see main).
        _say(quiet, f"MLflow UI, the trials: {experiment_link(config, experiment_id)}")
        _say(quiet, f"MLflow UI, the search run: {run_link(config, experiment_id, run_id)}")

    result = tune_stage(config, None if quiet else lambda info: typer.echo(progress_line(info), err=True), started)
    _say(quiet, f"best {config.tuner.objective} {result.score:.4f} with {result.hyperparameters} "
                f"({len(result.trials)} trials, {result.seconds:.0f}s, MLflow run {result.parent_run_id})")


@app.command()
def finetune(params: ParamsOption = Path("params.yaml"), set_: SetOption = None, quiet: QuietOption = False):
    """Fine-tune the backbone's top layers with the best head from features cached at the boundary (finetune.*);
    keep whichever of fine-tuned and head-only is better on the valid images held out for decisions, for
    `ffx evaluate`."""
    config = _config(params, set_)
    if config.finetune.enabled:  # off, the stage only writes its decision: no TensorFlow to load
        from components.runtime import quiet_tensorflow

        quiet_tensorflow(State.debug)
    from components.stages.finetune import finetune_stage

    decision = finetune_stage(config, None if quiet else lambda line: typer.echo(line, err=True))
    if not decision["enabled"]:
        _say(quiet, "finetune: off (finetune.enabled: false); evaluate scores the head alone")


@app.command()
def evaluate(params: ParamsOption = Path("params.yaml"), set_: SetOption = None, quiet: QuietOption = False):
    """Score the best head on the test split; write metrics, plots and reports/model_card.md; register it in MLflow."""
    import shlex

    config = _config(params, set_)  # first: it imports TensorFlow quietly
    from components.stages.evaluate import evaluate_stage

    result = evaluate_stage(config, command=shlex.join(["ffx", *sys.argv[1:]]))
    reg = result.registration
    auc = f", ROC AUC {result.metrics['roc_auc']:.4f}" if "roc_auc" in result.metrics else ""
    _say(quiet, f"test accuracy {result.metrics['accuracy']:.4f}, loss {result.metrics['loss']:.4f}{auc}")
    _say(quiet, f"registered {reg.name} version {reg.version}; {reg.decision}")
    from components.ui_links import model_version_link

    _say(quiet, f"MLflow UI, the model version: {model_version_link(config, reg.name, reg.version)}")
    if result.leak_warning:  # audit: a leak makes the test score optimistic
        typer.echo(result.leak_warning, err=True)
    for line in result.stale:
        typer.echo(f"note: {line}", err=True)


# --- audit -------------------------------------------------------------------------------------------------
@app.command()
def audit(params: ParamsOption = Path("params.yaml"), set_: SetOption = None, quiet: QuietOption = False,
          as_json: Annotated[bool, typer.Option("--json", help="print the findings' lists as JSON")] = False,
          drift: Annotated[Optional[Path], typer.Option(
              help="a folder of new images: the share outside the training distribution (audit.drift_folder)")] = None,
          write_exclusions: Annotated[Optional[Path], typer.Option(
              help="also write the suspects to this file, for data.exclude (nothing is moved or relabelled)")] = None):
    """Label issues, leaks between splits, near-duplicates and outliers, from the stored features (cleanlab)."""
    config = _config(params, set_)
    if drift or config.audit.drift_folder:  # new images go through the backbone
        from components.runtime import quiet_tensorflow

        quiet_tensorflow(State.debug)
    from components.stages.audit import audit_stage, write_exclusions as write_list

    result = audit_stage(config, drift)
    if as_json:
        typer.echo(json.dumps(result.lists, indent=2))
    counts = result.lists["counts"]
    _say(quiet, ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items())
         + f" -> {', '.join(str(p) for p in result.files)} (MLflow run {result.run_id})")
    if drift_found := result.lists.get("drift"):
        _say(quiet, f"drift: {drift_found['outside']} of {drift_found['images']} image(s) of {drift_found['source']} "
                    f"({100 * drift_found['share']:.1f}%, {100 * drift_found['expected_share']:.0f}% expected) outside "
                    f"the training distribution ({drift_found['method']})")
    if write_exclusions:
        _say(quiet, f"{write_list(write_exclusions, result.audit)} image(s) listed in {write_exclusions}; review "
                    "it, then set data.exclude to it")
# --- end audit ---------------------------------------------------------------------------------------------


@app.command()
def predict(paths: Annotated[list[Path], typer.Argument(help="image files and folders")],
            params: ParamsOption = Path("params.yaml"), set_: SetOption = None,
            model: Annotated[Optional[str],
                             typer.Option(help="registry | models:/NAME@ALIAS | runs:/… | MLflow model folder | "
                                               "head.keras")] = None,
            as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False):
    """Classify images with the registered champion (or another model): path, class, probability."""
    from components.model.predict import load_classifier, predict_paths, prediction_json

    config = _config(params, set_)
    classify = load_classifier(config, model)
    failed = 0
    for p in predict_paths(classify, paths, config.predict.batch_size):
        failed += p.error is not None
        if as_json:
            typer.echo(prediction_json(p))
        elif p.error:
            typer.echo(f"{p.path}\tERROR\t{p.error}")
        else:
            typer.echo(f"{p.path}\t{p.label}\t{p.probability:.4f}")
    if failed:
        raise typer.Exit(1)


@app.command()
def runs(params: ParamsOption = Path("params.yaml"), set_: SetOption = None,
         searches: Annotated[int, typer.Option("--searches", "-n", min=1, help="recent searches to list")] = 5,
         top: Annotated[int, typer.Option("--top", "-t", min=1, help="best trials to show")] = 10,
         search: Annotated[Optional[str], typer.Option(help="run id (or prefix) of the search whose trials to show; "
                                                             "default: the latest")] = None):
    """Recent searches and the best trials of one, read from the MLflow store: compare without a browser."""
    from components.reports.runs import (
        find_search,
        recent_searches,
        search_trials,
        searches_table,
        top_trials,
        trials_table,
    )
    from components.tracking import setup_mlflow
    from components.ui_links import compare_link, experiment_link

    config = _config(params, set_)
    client, experiment_id = setup_mlflow(config, create=False)
    listed = recent_searches(client, experiment_id, searches)
    if not listed:
        typer.echo(f"no searches yet in experiment '{config.mlflow.experiment}'; run `ffx tune`", err=True)
        return
    typer.echo(f"Recent searches (experiment '{config.mlflow.experiment}', {experiment_link(config, experiment_id)}):")
    typer.echo(searches_table(listed))
    chosen = find_search(client, experiment_id, search) if search else listed[0]
    objective = chosen.data.params.get("tuner.objective")
    trials = search_trials(client, experiment_id, chosen.info.run_id)
    best = top_trials(trials, objective or "score", top)
    typer.echo(f"\nTop {len(best)} of {len(trials)} trials of search {chosen.info.run_id} (by {objective or 'score'}):")
    typer.echo(trials_table(best))
    if best:
        typer.echo(f"\nCompare them in the MLflow UI: {compare_link(config, experiment_id, [t.run_id for t in best])}")


@app.command()
def pipeline(params: ParamsOption = Path("params.yaml"), set_: SetOption = None, quiet: QuietOption = False,
             as_json: Annotated[bool, typer.Option("--json", help="print the run's summary as JSON")] = False):
    """Run the whole pipeline as a Prefect flow (cached tasks; visible in the Prefect UI)."""
    started = time.perf_counter()
    config = _config(params, set_)  # first: it imports TensorFlow quietly
    from flows.pipeline import configured_pipeline, one_line_user_errors

    if not State.debug:
        one_line_user_errors()
    flow = configured_pipeline(config)
    summary = flow(params_file=str(params.resolve()), overrides=list(set_ or []))
    if as_json:
        typer.echo(json.dumps(dict(summary, seconds=time.perf_counter() - started), default=str))
    computed = sum(r["computed"] for r in summary["extract"].values())
    _say(quiet, f"pipeline done in {time.perf_counter() - started:.1f}s: {computed} image(s) through the backbone, "
                f"best {summary['tune']['score']:.4f}, test accuracy {summary['evaluate']['accuracy']:.4f}; "
                f"{summary['evaluate']['decision']}")


@app.command()
def serve(params: ParamsOption = Path("params.yaml"), set_: SetOption = None):
    """Serve the `ffx-pipeline` deployment with the schedule from params.yaml (needs `prefect server start`)."""
    _config(params, set_)  # a params error shows before serving, and TensorFlow is imported quietly
    from flows.pipeline import serve as serve_flow

    serve_flow(params, list(set_ or []))


@app.command("demo-data")
def demo_data(params: ParamsOption = Path("params.yaml"), set_: SetOption = None,
              force: Annotated[bool, typer.Option(help="rewrite an existing folder")] = False):
    """Generate the demo dataset at data.root, offline: pagoda, dahlia, face and flag crops of shipped sample photos.

    45/18/18 images per class in train/valid/test; no source pixel is in two splits (components/data/sampledata.py)."""
    import shutil

    from components.data.sampledata import make_demo_dataset

    config = _config(params, set_)
    root = config.data.root
    if root.exists() and any(root.iterdir()):
        if not force:
            typer.echo(f"{root} already holds data; keeping it (use --force to regenerate)", err=True)
            return
        shutil.rmtree(root)
    # Made in a sibling folder and renamed: a run killed half-way leaves no half dataset that looks complete.
    partial = root.with_name(f".{root.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    counts = make_demo_dataset(partial)
    partial.rename(root)
    typer.echo(f"demo dataset written to {root}: {counts}", err=True)


def main() -> None:
    from components.runtime import run_entry

    # MLflow prints "View run"/"View experiment" links for every run it ends on a tracking server: two lines per
    # trial. `ffx tune` prints one link to the search instead; MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT=false brings
    # MLflow's back. Set here, in the process's entry, so that the trial workers it starts inherit it.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # MLflow's HTTP client retries a request to a tracking server that does not answer for about 4 minutes in
    # silence (7 retries); one retry here, and the search's client says that it waits, and for how long
    # (tracking.PatientClient, mlflow.wait_for_server_s).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    # A SIGTERM drops the write in progress (temporary and .partial files are never under a final name) and closes
    # the search's MLflow runs KILLED: a re-run resumes. Bad input, or out of space in any writer (KerasTuner's
    # checkpoints, MLflow's local artifacts, Prefect's results included): one line.
    run_entry(app, "stopped by SIGTERM; run the same command again to resume", debug=lambda: State.debug)


if __name__ == "__main__":
    main()
