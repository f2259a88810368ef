"""What each stage reads and writes, declared once: its params, its input files and its outputs.

From these declarations come dvc.yaml's params, deps and outs (`python -m ffx.dvc_yaml` writes the file), the Prefect
cache keys (flows/cache_keys.py: the values of exactly these params, digests of these files, the stage's code), and
the fine-tuning settings key. A param is named by its key (`predict.tta`) or by its section (`tuner`: every key under
it). Paths are templates over params, `${features.dir}/train.h5`, as DVC reads them.

Not declared, on purpose: the feature cache (features.cache_dir), the tuner's and fine-tuning's state
(tuner.directory, finetune.directory) and the MLflow store persist across runs and change no output; *.lock and
*.partial files are a run's own.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from components.config import Config
from components.files import content_key, file_digest


@dataclass(frozen=True)
class Item:
    """A param key or section, or an input path template; `why` is the comment dvc.yaml shows beside it."""
    name: str
    why: str = ""


@dataclass(frozen=True)
class Output:
    path: str
    why: str = ""
    kind: str = "outs"          # outs | metrics | plots, as dvc.yaml sorts them
    cache: bool = True          # false: DVC tracks it in git (small text, plots), not in its cache
    plot: dict = field(default_factory=dict)  # a plot's template and axes


@dataclass(frozen=True)
class Stage:
    name: str                   # also the `ffx` command that runs it, and components.stages.NAME its entry module
    params: tuple[Item, ...]
    deps: tuple[Item, ...]
    outs: tuple[Output, ...]
    why: str = ""
    quiet: bool = False         # dvc repro runs the command with --quiet (no progress bars in its log)


FEATURES = ("${features.dir}/train.h5", "${features.dir}/valid.h5", "${features.dir}/test.h5")
HEAD = ("${model.dir}/head.keras", "${model.dir}/head.json")
# The settings the stored features were made with: a stage that reads them reads these too.
FEATURE_SETTINGS = (Item("backbone", "the features must have been made with these settings"),
                    Item("extract.precision"), Item("extract.augment"), Item("features.dir"))

STAGES = (
    Stage("extract", quiet=True, params=(
        Item("data"), Item("backbone"), Item("extract"), Item("features.dir"),
        Item("predict.tta", "true: also writes tta/test_flip.h5 (mirrored test images), read by evaluate"),
    ), deps=(
        Item("${data.root}", "data.exclude, the audit's exclusion list, belongs under it: then DVC sees its edits here"),
    ), outs=(
        *(Output(path) for path in FEATURES),
        Output("${features.dir}/tta", "index.json, and test_flip.h5 with predict.tta"),
        Output("${features.dir}/skipped.json"),
        Output("${features.dir}/shards", "index.json, and with extract.shard_size the shard files merged into the "
                                         "splits", cache=False),
    )),
    Stage("tune", params=(
        *FEATURE_SETTINGS, Item("tuner"), Item("train"), Item("space"), Item("model.dir"), Item("reports.dir"),
        Item("mlflow"),
    ), deps=tuple(Item(path) for path in FEATURES[:2]), outs=(
        *(Output(path) for path in HEAD),
        Output("${reports.dir}/search/trials.csv", cache=False),
        Output("${reports.dir}/search/trials.html", cache=False),
        *(Output(f"${{reports.dir}}/search/{name}.png", "trial comparison, also logged to the search's MLflow "
                                                       "parent run" if name == "parallel_coordinates" else "",
                 kind="plots", cache=False)
          for name in ("parallel_coordinates", "objective_by_trial", "learning_curves")),
    )),
    Stage("finetune", quiet=True, why="finetune.enabled: false (the default) only writes the decision: evaluate "
                                      "scores the head alone", params=(
        Item("data"), Item("backbone"), Item("extract"), Item("features.dir"),
        Item("predict.tta", "true: the mirrored test split at the boundary too"),
        Item("tuner.objective", "early stopping and the choice between fine-tuned and head-only"),
        Item("tuner.seed", "the order of the training rows"),
        Item("tuner.decision_fraction", "the valid images held out from early stopping for the decision"),
        Item("finetune.enabled"), Item("finetune.boundary"), Item("finetune.epochs"),
        Item("finetune.learning_rate"), Item("finetune.ema_momentum"), Item("finetune.batch_size"),
        Item("finetune.early_stopping_patience"), Item("model.dir"), Item("mlflow", "each epoch is logged"),
    ), deps=(
        Item("${data.root}", "the boundary features are extracted from the images"),
        *(Item(path) for path in HEAD),
    ), outs=(
        Output("${features.dir}/boundary", "index.json, and the boundary feature files when fine-tuning is on",
               cache=False),
        Output("${model.dir}/finetuned", "finetune.json (the decision), and head.keras + head.json: the fine-tuned "
                                         "model"),
    )),
    Stage("evaluate", params=(
        Item("data"), *FEATURE_SETTINGS, Item("model.dir"),
        Item("tuner", "the model card quotes the search settings; decision_fraction: the images compared on"),
        Item("train.epochs"), Item("mlflow"), Item("registry"), Item("metrics.dir"), Item("reports.dir"),
        Item("predict", "the registered model's spec: batch size, test-time augmentation"),
    ), deps=(
        *(Item(path) for path in HEAD),
        Item(FEATURES[0], "the model card's data table"), Item(FEATURES[1]), Item(FEATURES[2]),
        Item("${features.dir}/tta"),
        Item("${features.dir}/boundary", "the fine-tuned model's test features, when it was kept"),
        Item("${model.dir}/finetuned", "which model to score and register"),
        Item("${data.root}/test", "the most confidently wrong images are shown"),
        Item("${data.root}/valid", "champion and challenger are both scored on its images held out for decisions"),
        Item("${metrics.dir}/audit.json", "the model card quotes the audit's counts; a leak is a warning"),
    ), outs=(
        Output("${reports.dir}/model_card.md", cache=False),
        Output("${metrics.dir}/test.json", kind="metrics", cache=False),
        Output("${metrics.dir}/test_predictions.csv", kind="plots", cache=False,
               plot={"template": "confusion", "x": "predicted", "y": "actual"}),
        Output("${metrics.dir}/roc.csv", kind="plots", cache=False, plot={"template": "simple", "x": "fpr", "y": "tpr"}),
        *(Output(f"${{reports.dir}}/evaluation/{name}.png", "also logged as MLflow artifacts of the registered "
                                                           "model's run" if name == "confusion_matrix" else "",
                 kind="plots", cache=False)
          for name in ("confusion_matrix", "roc", "precision_recall", "calibration", "confident_errors")),
    )),
    Stage("audit", quiet=True, why="what the stored features say about the data", params=(
        Item("audit", "audit.drift_folder: a folder of new images; its images are not declared (see README)"),
        *FEATURE_SETTINGS, Item("data"), Item("metrics.dir"), Item("reports.dir"), Item("mlflow"),
    ), deps=(
        *(Item(path) for path in FEATURES), Item("${data.root}", "the report's thumbnails"),
    ), outs=(
        Output("${reports.dir}/audit.json", "the findings, listed (ffx audit --json prints them)", cache=False),
        Output("${reports.dir}/audit.html", "each suspect beside its nearest neighbours, thumbnails embedded",
               cache=False),
        Output("${metrics.dir}/audit.json", "counts per kind: dvc metrics diff shows them", kind="metrics",
               cache=False),
    )),
)


def stage(name: str) -> Stage:
    for declared in STAGES:
        if declared.name == name:
            return declared
    raise KeyError(f"no stage named {name!r}; the stages: {', '.join(s.name for s in STAGES)}")


def stage_module(name: str) -> str:
    """The module whose functions run stage `name`, in `ffx` and in the Prefect flow alike."""
    return f"components.stages.{name}"


def declares(declared: Stage, key: str) -> bool:
    """Whether the stage reads param `key` (a.b.c): it names the key or a section above it."""
    return any(key == item.name or key.startswith(item.name + ".") for item in declared.params)


def param_value(config: Config, key: str):
    section, *rest = key.split(".")
    value = config.section(section)
    for part in rest:
        value = value[part]
    return value


def param_values(config: Config, name: str) -> dict:
    """The values of the params stage `name` declares, by key."""
    return {item.name: param_value(config, item.name) for item in stage(name).params}


def params_key(config: Config, name: str) -> str:
    return content_key(param_values(config, name))


def resolve(config: Config, template: str) -> Path:
    """`${features.dir}/train.h5` as a path (relative params resolve against the params file's folder)."""
    text = re.sub(r"\$\{([\w.]+)\}", lambda match: str(param_value(config, match.group(1))), template)
    path = Path(text)
    return path if path.is_absolute() else config.root / path


def path_digest(path: Path) -> str | None:
    """A file's bytes, or a folder's files by relative path, as a digest; None when missing. Lock and partial
    files are a run's own and left out."""
    if path.is_file():
        return file_digest(path)
    if not path.is_dir():
        return None
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix not in (".lock", ".partial"))
    return content_key([(p.relative_to(path).as_posix(), file_digest(p)) for p in files])


def input_digests(config: Config, name: str, known: dict[str, str] | None = None) -> dict[str, str | None]:
    """The digest of each input stage `name` declares, by template; `known`: digests the caller already has, by
    template (a feature file's content key from the extraction that wrote it)."""
    known = known or {}
    return {item.name: known[item.name] if item.name in known else path_digest(resolve(config, item.name))
            for item in stage(name).deps}
