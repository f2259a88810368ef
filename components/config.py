"""One typed configuration, read once from params.yaml over the packaged defaults."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from components.errors import ConfigError

DEFAULTS_FILE = Path(__file__).with_name("defaults.yaml")

# String keys where an empty value means "not set".
MAY_BE_EMPTY = {"orchestration.dask_address"}

# Values a key may take, checked before any work starts.
CHOICES = {
    "data.on_bad_image": ("error", "skip"),
    "backbone.name": ("vgg16", "vgg19", "resnet50", "mobilenet_v2", "efficientnet_b0",
                      "inception_v3", "xception", "densenet121"),
    "extract.precision": ("float32", "bfloat16"),
    "backbone.pooling": ("flatten", "avg", "max", "avg+max"),
    "tuner.algorithm": ("bayesian", "random", "hyperband"),
    "tuner.objective": ("val_accuracy", "val_loss", "accuracy", "loss"),
    "registry.promote": ("always", "if_better"),
    "registry.compare_split": ("test", "valid"),
    "orchestration.task_runner": ("thread", "dask"),
    "registry.compare_metric": ("accuracy", "roc_auc", "loss"),
}


@dataclass(frozen=True)
class DataConfig:
    root: Path
    on_bad_image: str
    max_pixels: int


@dataclass(frozen=True)
class BackboneConfig:
    name: str
    weights: str
    input_size: int
    seed: int
    # Defaults as in defaults.yaml, for code that builds one by hand (benches, heads saved before the options).
    pooling: str = "flatten"  # flatten | avg | max | avg+max over the feature map's spatial axes
    layer: str = "last"       # the base's last layer, or a layer name such as block4_pool


@dataclass(frozen=True)
class AugmentConfig:
    copies: int         # augmented views per train image, besides the original (0: none)
    seed: int
    flip: bool
    crop: float         # up to this fraction of the side cropped away (then resized back): a small zoom
    brightness: float   # +- this fraction of 255 added
    contrast: float     # pixels scaled about their mean by 1 +- this


@dataclass(frozen=True)
class ExtractConfig:
    batch_size: int
    shard_size: int
    precision: str
    augment: AugmentConfig


@dataclass(frozen=True)
class FeaturesConfig:
    dir: Path
    cache_dir: Path

    def path(self, split: str) -> Path:
        return self.dir / f"{split}.h5"


@dataclass(frozen=True)
class TunerConfig:
    algorithm: str
    workers: int
    max_trials: int
    executions_per_trial: int
    objective: str
    seed: int
    directory: Path


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int
    learning_rate: float
    normalize: bool
    early_stopping_patience: int


@dataclass(frozen=True)
class SpaceConfig:
    units: list[int]
    dropout_min: float
    dropout_max: float
    dropout_step: float
    extra_units: list[int]
    extra_when_units: list[int]


@dataclass(frozen=True)
class ModelConfig:
    dir: Path


@dataclass(frozen=True)
class MetricsConfig:
    dir: Path


@dataclass(frozen=True)
class ReportsConfig:
    dir: Path


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str
    artifact_location: Path
    experiment: str
    registered_model: str


@dataclass(frozen=True)
class RegistryConfig:
    alias: str
    promote: str
    compare_split: str
    compare_metric: str


@dataclass(frozen=True)
class PredictConfig:
    model: str
    batch_size: int
    tta: bool  # average the head's output over the image and its mirror image


@dataclass(frozen=True)
class OrchestrationConfig:
    results_dir: Path
    task_runner: str
    dask_address: str
    dask_workers: int
    retries: int


@dataclass(frozen=True)
class ScheduleConfig:
    cron: str
    timezone: str


@dataclass(frozen=True)
class Config:
    data: DataConfig
    backbone: BackboneConfig
    extract: ExtractConfig
    features: FeaturesConfig
    tuner: TunerConfig
    train: TrainConfig
    space: SpaceConfig
    model: ModelConfig
    metrics: MetricsConfig
    reports: ReportsConfig
    mlflow: MlflowConfig
    registry: RegistryConfig
    predict: PredictConfig
    orchestration: OrchestrationConfig
    schedule: ScheduleConfig
    root: Path  # folder of the params file: relative paths resolve against it
    source: Path
    overrides: tuple[str, ...] = ()  # the --set KEY=VALUE items applied, so child processes see the same config

    def section(self, name: str) -> dict:
        """A section as plain values, for hashing and logging."""
        return _plain(dataclasses.asdict(getattr(self, name)))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def load_config(params_file: str | Path = "params.yaml", overrides: list[str] | tuple = ()) -> Config:
    """Read `params_file` over the defaults, apply `key=value` overrides, check every key and type."""
    params_file = Path(params_file).resolve()
    if not params_file.is_file():
        raise ConfigError(f"{params_file}: params file not found")
    merged = _read_yaml(DEFAULTS_FILE)
    _merge(merged, _read_yaml(params_file), params_file.name, [])
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override '{item}': expected KEY=VALUE, e.g. tuner.max_trials=3")
        patch: dict = {}
        node = patch
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
        _merge(merged, patch, "override", [])
    config = _build(Config, merged, [], params_file.parent, params_file)
    return dataclasses.replace(config, overrides=tuple(overrides))


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def _merge(base: dict, patch: dict, origin: str, prefix: list[str]) -> None:
    for key, value in patch.items():
        dotted = ".".join(prefix + [str(key)])
        if key not in base:
            allowed = ", ".join(sorted(base))
            raise ConfigError(f"{origin}: unknown key '{dotted}' (allowed here: {allowed})")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{origin}: '{dotted}' must be a mapping with keys {', '.join(base[key])}")
            _merge(base[key], value, origin, prefix + [str(key)])
        else:
            base[key] = value


def _build(cls, values: dict, prefix: list[str], root: Path, source: Path):
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for field in fields(cls):
        if field.name in ("root", "source", "overrides") and cls is Config:
            continue
        dotted = ".".join(prefix + [field.name])
        kind = hints[field.name]
        value = values[field.name]
        if dataclasses.is_dataclass(kind):
            kwargs[field.name] = _build(kind, value, prefix + [field.name], root, source)
        else:
            kwargs[field.name] = _coerce(dotted, kind, value, root)
    if cls is Config:
        kwargs.update(root=root, source=source)
        config = cls(**kwargs)
        _check_ranges(config)
        return config
    return cls(**kwargs)


def _coerce(key: str, kind, value, root: Path):
    def wrong(expected: str):
        return ConfigError(f"params: '{key}' must be {expected}, got {value!r}")

    if kind is bool:
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an integer")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong("a number")
        return float(value)
    if kind is str:
        if value is None and key in MAY_BE_EMPTY:
            value = ""
        if not isinstance(value, str) or (not value and key not in MAY_BE_EMPTY):
            raise wrong("a non-empty string")
        if key in CHOICES and value not in CHOICES[key]:
            raise wrong("one of " + ", ".join(CHOICES[key]))
        return value
    if kind is Path:
        if not isinstance(value, str) or not value:
            raise wrong("a path")
        path = Path(value).expanduser()
        return path if path.is_absolute() else root / path
    if typing.get_origin(kind) is list:
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise wrong("a list of integers")
        return list(value)
    raise AssertionError(f"unsupported config type {kind} for {key}")


def _check_ranges(config: Config) -> None:
    positive = {
        "extract.batch_size": config.extract.batch_size,
        "tuner.max_trials": config.tuner.max_trials,
        "tuner.executions_per_trial": config.tuner.executions_per_trial,
        "train.epochs": config.train.epochs,
        "train.batch_size": config.train.batch_size,
        "predict.batch_size": config.predict.batch_size,
        "data.max_pixels": config.data.max_pixels,
        "train.learning_rate": config.train.learning_rate,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"params: '{key}' must be greater than 0, got {value}")
    space = config.space
    if not space.units or any(u <= 0 for u in space.units):
        raise ConfigError("params: 'space.units' must be a non-empty list of positive layer sizes")
    if any(u <= 0 for u in space.extra_units):
        raise ConfigError("params: 'space.extra_units' must hold positive layer sizes")
    if not 0 <= space.dropout_min <= space.dropout_max < 1:
        raise ConfigError("params: 'space.dropout_min' and 'space.dropout_max' must satisfy 0 <= min <= max < 1")
    if config.train.early_stopping_patience < 0:
        raise ConfigError("params: 'train.early_stopping_patience' must be 0 (off) or more epochs, "
                          f"got {config.train.early_stopping_patience}")
    augment = config.extract.augment
    if augment.copies < 0:
        raise ConfigError(f"params: 'extract.augment.copies' must be 0 (off) or more, got {augment.copies}")
    for key, value in (("crop", augment.crop), ("brightness", augment.brightness), ("contrast", augment.contrast)):
        if not 0 <= value < 1:
            raise ConfigError(f"params: 'extract.augment.{key}' must be at least 0 and below 1, got {value}")
    if space.dropout_step <= 0:
        raise ConfigError("params: 'space.dropout_step' must be greater than 0")
    for key, value, least in (("extract.shard_size", config.extract.shard_size, 0),
                              ("orchestration.dask_workers", config.orchestration.dask_workers, 1),
                              ("orchestration.retries", config.orchestration.retries, 0),
                              ("tuner.workers", config.tuner.workers, 0)):
        if value < least:
            raise ConfigError(f"params: '{key}' must be at least {least}, got {value}")
    _check_schedule(config.schedule)
    if not config.tuner.directory.name:
        raise ConfigError("params: 'tuner.directory' must name a folder")


def _check_schedule(schedule: ScheduleConfig) -> None:
    import datetime
    import zoneinfo

    from cronsim import CronSim, CronSimError

    try:
        CronSim(schedule.cron, datetime.datetime.now())
    except CronSimError as exc:
        raise ConfigError(f"params: 'schedule.cron' is not a cron expression: {schedule.cron!r} ({exc})") from None
    try:
        zoneinfo.ZoneInfo(schedule.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"params: 'schedule.timezone' unknown: {schedule.timezone!r} (an IANA name such as "
                          "UTC or Europe/Paris)") from None


def tracking_uri(config: Config) -> str:
    """The MLflow tracking URI with a relative SQLite path resolved against the project root."""
    uri = config.mlflow.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(config.root / uri[len(prefix):])
    return uri
