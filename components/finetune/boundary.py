"""The boundary: the last frozen layer of the backbone. Its output maps are cached like any features (the same
content-addressed cache, the same augmented views and mirror), in a feature set of their own under
features.dir/boundary/, so that a fine-tuning epoch runs only the layers after it and the head search keeps its
own features."""
from __future__ import annotations

import typing
from pathlib import Path

from components.config import BackboneConfig, BackboneName, Config
from components.data.dataset import SPLITS
from components.errors import ConfigError, FFXError
from components.features.backbone import (
    LAST_LAYER,
    Backbone,
    backbone_identity,
    build_backbone,
    check_same_identity,
    layer_names,
)
from components.features.extraction import (
    ExtractionResult,
    Progress,
    extract_file,
    feature_files,
    plan_extraction,
)
from components.features.identity import split_views
from components.features.store import FeatureSet, read_attrs, read_features, write_feature_index

AUTO = "auto"          # finetune.boundary: the architecture's default below
BOUNDARY_DIR = "boundary"
# The input of each architecture's last convolutional block (documented in components/defaults.yaml too).
# Xception has none: its block 14 starts at an Add layer Keras names by a process-wide counter (add_11, add_23...).
DEFAULT_BOUNDARIES: dict[str, str | None] = {
    "vgg16": "block4_pool", "vgg19": "block4_pool", "resnet50": "conv4_block6_out", "mobilenet_v2": "block_15_add",
    "efficientnet_b0": "block6d_add", "inception_v3": "mixed9", "densenet121": "pool4_pool", "xception": None,
}
assert set(DEFAULT_BOUNDARIES) == set(typing.get_args(BackboneName)), "each backbone.name needs a default boundary"


def resolve_boundary(config: Config) -> str:
    """The boundary layer's name, checked against the base's layers (builds an unweighted model: not at params
    validation). One line per mistake: no default, not a layer, not before the head's features."""
    backbone = config.backbone
    boundary = config.finetune.boundary
    if boundary == AUTO:
        boundary = DEFAULT_BOUNDARIES[backbone.name]
        if boundary is None:
            raise ConfigError(f"params: 'finetune.boundary' has no default for backbone.name {backbone.name}; set "
                              "it to the name of the last frozen layer")
    names = layer_names(backbone.name, backbone.input_size)
    if boundary not in names:
        raise ConfigError(f"params: 'finetune.boundary' unknown for {backbone.name}: {boundary!r} (allowed: "
                          f"{AUTO}, {', '.join(names)})")
    head_layer = names[-1] if backbone.layer == LAST_LAYER else backbone.layer
    if names.index(boundary) >= names.index(head_layer):
        raise ConfigError(f"params: 'finetune.boundary' {boundary} is at or after {head_layer}, the layer the "
                          "head's features come from (backbone.layer); choose an earlier layer")
    return boundary


def boundary_config(backbone: BackboneConfig, boundary: str) -> BackboneConfig:
    """The base cut at `boundary`, its maps flattened as they are (no pooling): reshaped back when training."""
    return backbone.model_copy(update={"layer": boundary, "pooling": "flatten"})


def boundary_backbone(config: Config, boundary: str) -> Backbone:
    return build_backbone(boundary_config(config.backbone, boundary), config.root, config.extract.precision)


def boundary_path(config: Config, name: str) -> Path:
    """features.dir/boundary/NAME.h5, for every feature file of the extract stage (test_flip too)."""
    return config.features.dir / BOUNDARY_DIR / f"{name}.h5"


def write_boundary_index(config: Config) -> None:
    """What the folder holds: a DVC output that is never empty, fine-tuning on or off."""
    folder = config.features.dir / BOUNDARY_DIR
    folder.mkdir(parents=True, exist_ok=True)
    write_feature_index(folder)


def extract_boundary(config: Config, backbone: Backbone, splits: tuple[str, ...] = SPLITS,
                     progress: Progress | None = None) -> dict[str, ExtractionResult]:
    """Each feature file of the extract stage again at the boundary, through the feature cache: only images (and
    views) not yet cached for this boundary go through the frozen layers."""
    plan = plan_extraction(config, splits)
    results = {}
    for name in feature_files(config, tuple(plan.splits)):
        results[name] = extract_file(config, plan, name, backbone, boundary_path(config, name), progress)
    write_boundary_index(config)
    return results


def check_boundary_file(config: Config, boundary: str, name: str) -> dict:
    """The attributes of a boundary feature file, refused unless it was made at `boundary` with the settings
    params.yaml asks for (the one identity rule)."""
    path = boundary_path(config, name)
    try:
        attrs = read_attrs(path)
    except OSError:
        raise FFXError(f"{path}: no boundary feature file (run `ffx finetune`)") from None
    weights_id = attrs.get("weights")
    expected = backbone_identity(boundary_config(config.backbone, boundary), weights_id, config.extract.precision)
    check_same_identity(f"{path}: made with other settings than params.yaml asks for",
                        dict(attrs.get("identity") or {}, views=attrs.get("views"), complete=attrs.get("complete")),
                        dict(expected, views=split_views(config, name), complete=True), "run `ffx finetune` again")
    return attrs


def load_boundary_features(config: Config, boundary: str, name: str) -> FeatureSet:
    """A whole boundary feature file (the test split, for evaluation), checked as above."""
    check_boundary_file(config, boundary, name)
    return read_features(boundary_path(config, name))
