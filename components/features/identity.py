"""Which features the configuration asks for, and whether stored ones are those: every check calls the one rule,
components.features.backbone.check_same_identity, on identities made here."""
from __future__ import annotations

from pathlib import Path

from components.config import Config
from components.data.dataset import SPLITS
from components.data.holdout import decision_mask
from components.features.backbone import backbone_identity, check_same_identity, resolve_weights
from components.features.store import FeatureSet, read_attrs, read_features
from components.files import content_key

FLIPPED_SUFFIX = "_flip"  # test_flip.h5: the test split mirrored, for test-time augmentation (predict.tta)
TTA_DIR = "tta"           # its folder in features.dir: a DVC output of the extract stage, made even when empty


def feature_path(config: Config, name: str) -> Path:
    """A feature file of the extract stage: train, valid and test in features.dir; test_flip in features.dir/tta."""
    folder = config.features.dir / TTA_DIR if name.endswith(FLIPPED_SUFFIX) else config.features.dir
    return folder / f"{name}.h5"


def split_views(config: Config, name: str) -> dict | None:
    """Views a split's file holds besides the plain images: train's augmentation, test_flip's mirror; else None."""
    if name.endswith(FLIPPED_SUFFIX):
        return {"flip": True}
    if name == "train" and config.extract.augment.copies > 0:
        return {"augment": config.extract.augment.model_dump()}
    return None


def configured_identity(config: Config) -> dict:
    """The backbone identity params.yaml asks for, without building the model: what extraction keys, the
    orchestrator's cache keys and the check of stored features all compare against."""
    _, weights_id = resolve_weights(config.backbone, config.root)
    return backbone_identity(config.backbone, weights_id, config.extract.precision)


def load_split_features(config: Config, split: str) -> FeatureSet:
    """Read a split's features and refuse them if they were made with other backbone settings or views."""
    path = feature_path(config, split)
    features = read_features(path)
    check_same_identity(f"{path}: made with other settings than params.yaml asks for",
                        dict(features.attrs.get("identity") or {}, views=features.attrs.get("views")),
                        dict(configured_identity(config), views=split_views(config, split)),
                        "run `ffx extract` again")
    return features


SEARCH_PART, DECISION_PART = "search", "decision"


def valid_parts(config: Config, valid: FeatureSet) -> tuple[FeatureSet, FeatureSet]:
    """(search, decision): the valid images the search and early stopping use, and those held out for the
    keep-or-not decisions (tuner.decision_fraction, components.data.holdout)."""
    held = decision_mask(valid.sha1, valid.labels, config.tuner.decision_fraction)
    key = valid.attrs.get("key")
    return (valid.rows(~held, SEARCH_PART, valid_part_key(config, key, SEARCH_PART)),
            valid.rows(held, DECISION_PART, valid_part_key(config, key, DECISION_PART)))


def search_splits(config: Config) -> tuple[FeatureSet, FeatureSet]:
    """(train, valid): what the head search trains and scores on, in the chief and in every worker alike; the valid
    images held out for decisions are not among them."""
    train = load_split_features(config, "train")
    valid, _ = valid_parts(config, load_split_features(config, "valid"))
    return train, valid


def valid_part_key(config: Config, valid_key: str, part: str) -> str:
    """A part's content key: the whole file's (its images) and the fraction decide which rows it holds."""
    return content_key({"file": valid_key, "part": part, "decision_fraction": config.tuner.decision_fraction})


def features_content_key(config: Config) -> str | None:
    """The train, valid and test feature files' keys as one (None when one is missing): what an artefact made from
    them (the audit's counts) records, so that a reader can tell it belongs to these files."""
    paths = {split: feature_path(config, split) for split in SPLITS}
    if not all(path.is_file() for path in paths.values()):
        return None
    return content_key({split: read_attrs(path).get("key") for split, path in paths.items()})
