"""backbone.pooling and backbone.layer: feature sizes, values, identity (attributes, cache key), checks."""
import numpy as np
import pytest

from components.config import load_config
from components.errors import ConfigError, FFXError
from components.features.backbone import backbone_identity, build_backbone, pool_feature_map, pooled_again
from components.features.identity import feature_path, load_split_features
from components.features.store import read_features
from components.stages.extract import extract_stage


def _images(count=3, size=32):
    return np.random.default_rng(0).integers(0, 255, (count, size, size, 3), dtype=np.uint8)


def test_pooling_reduces_the_chosen_layers_map_over_its_spatial_axes(project):
    # At 32 pixels block3_pool is a 4x4x256 map: flatten keeps 4096 values, avg/max keep one per channel.
    config = load_config(project / "params.yaml", ["backbone.layer=block3_pool"])
    flat = build_backbone(config.backbone, config.root)
    assert flat.feature_shape == (4, 4, 256) and flat.feature_dim == 4096
    maps = flat.features(_images()).reshape(3, 4, 4, 256)
    for pooling, expected in (("avg", maps.mean(axis=(1, 2))), ("max", maps.max(axis=(1, 2))),
                              ("avg+max", np.hstack([maps.mean(axis=(1, 2)), maps.max(axis=(1, 2))]))):
        backbone = build_backbone(load_config(project / "params.yaml", ["backbone.layer=block3_pool",
                                                                        f"backbone.pooling={pooling}"]).backbone,
                                  config.root)
        features = backbone.features(_images())
        assert features.shape == (3, backbone.feature_dim) == expected.shape
        np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(pool_feature_map(maps, pooling), expected, rtol=1e-6)


@pytest.mark.parametrize("pooling", ["flatten", "avg", "max", "avg+max"])
def test_the_fine_tuning_models_pooling_layer_computes_what_extraction_computes(pooling):
    import keras

    from components.finetune.model import pooling_layer

    maps = np.random.default_rng(1).normal(size=(3, 4, 4, 8)).astype(np.float32)
    inputs = keras.Input((4, 4, 8))
    layer = keras.Model(inputs, pooling_layer(pooling)(inputs))
    np.testing.assert_allclose(layer.predict(maps, verbose=0), pool_feature_map(maps, pooling), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(pooled_again(maps.reshape(3, -1), (4, 4, 8), pooling), pool_feature_map(maps, pooling))


def test_unknown_layer_is_refused_naming_the_key_and_the_valid_layers(project):
    config = load_config(project / "params.yaml", ["backbone.layer=block9_pool"])
    with pytest.raises(ConfigError, match=r"'backbone.layer' unknown for vgg19: 'block9_pool'.*block4_pool"):
        build_backbone(config.backbone, config.root)


def test_unknown_pooling_is_refused_with_the_allowed_values(project):
    with pytest.raises(ConfigError, match=r"'backbone.pooling' must be one of flatten, avg, max, avg\+max"):
        load_config(project / "params.yaml", ["backbone.pooling=sum"])


def test_pooling_and_layer_are_recorded_and_separate_the_cache(project):
    default = load_config(project / "params.yaml")
    pooled = load_config(project / "params.yaml", ["backbone.pooling=avg", "backbone.layer=block4_pool"])
    # The recipe's identity is unchanged by the options, so existing caches and feature files stay valid.
    assert backbone_identity(default.backbone, "w") == {"name": "vgg19", "weights": "w", "input_size": 32,
                                                       "pooling": "flatten", "precision": "float32"}
    assert build_backbone(pooled.backbone, pooled.root).key != build_backbone(default.backbone, default.root).key
    results = extract_stage(pooled, splits=("train",))
    attrs = read_features(feature_path(pooled, "train")).attrs
    assert attrs["pooling"] == "avg" and attrs["layer"] == "block4_pool"
    assert read_features(feature_path(pooled, "train")).features.shape == (24, 512)
    assert results["train"].computed == 24
    assert extract_stage(default, splits=("train",))["train"].computed == 24  # not served from the avg cache


def test_features_made_with_another_pooling_are_refused_by_the_stages(project):
    extract_stage(load_config(project / "params.yaml", ["backbone.pooling=max"]), splits=("valid",))
    with pytest.raises(FFXError, match=r"valid.h5: made with other settings .*pooling 'max', expected 'flatten'"):
        load_split_features(load_config(project / "params.yaml"), "valid")
