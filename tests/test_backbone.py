import numpy as np
import pytest

from components.config import BackboneConfig, default_params
from components.errors import ConfigError, WeightsError
from components.features.backbone import backbone_of_head, build_backbone, check_backbone_config


def _config(**overrides):
    return BackboneConfig(**{**default_params()["backbone"], "name": "vgg19", "weights": "none", "input_size": 32,
                             "seed": 0, **overrides})


def test_random_weights_are_seeded_so_extraction_and_prediction_agree(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    first = build_backbone(_config(), tmp_path).features(images)
    second = build_backbone(_config(), tmp_path).features(images)
    assert first.shape == (2, 512)
    np.testing.assert_array_equal(first, second)


def test_vgg19_at_150_gives_the_recipe_feature_size(tmp_path):
    backbone = build_backbone(_config(input_size=150), tmp_path)
    assert backbone.feature_shape == (4, 4, 512) and backbone.feature_dim == 8192


def test_offline_pretrained_vgg16_weights_are_the_files_arrays_in_every_convolution(tmp_path):
    import h5py

    from components.features.backbone import hed_weights_path

    backbone = build_backbone(_config(name="vgg16", weights="hed-vgg16"), tmp_path)
    assert backbone.weights_id.startswith("hed-vgg16(")
    compared = 0
    with h5py.File(hed_weights_path(), "r") as store:
        for block, convs in enumerate((2, 2, 3, 3, 3), start=1):  # VGG16's 13 convolutions
            for index in range(convs):
                stored = store[f"block{block}/layers/conv2d{f'_{index}' if index else ''}/vars"]
                kernel, bias = backbone.model.get_layer(f"block{block}_conv{index + 1}").get_weights()
                np.testing.assert_array_equal(kernel, stored["0"][()], err_msg=f"block{block}_conv{index + 1}")
                np.testing.assert_array_equal(bias, stored["1"][()], err_msg=f"block{block}_conv{index + 1}")
                compared += 1
    assert compared == 13


@pytest.mark.parametrize("overrides,message", [
    ({"name": "alexnet"}, "'backbone.name' must be one of vgg16, vgg19"),
    ({"name": "inception_v3", "input_size": 64}, "below inception_v3's minimum of 75"),
    ({"weights": "missing.weights.h5"}, "'backbone.weights' file not found"),
    ({"name": "vgg19", "weights": "hed-vgg16"}, "set backbone.name: vgg16"),
])
def test_bad_backbone_params_fail_before_work(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_backbone_config(_config(**overrides), tmp_path)


def test_a_heads_backbone_must_still_resolve_to_the_weights_it_was_trained_on(tmp_path):
    path = tmp_path / "mine.weights.h5"
    build_backbone(_config(seed=7), tmp_path).model.save_weights(path)
    spec = {**_config(weights=str(path)).model_dump(), "precision": "bfloat16"}
    trained_on = build_backbone(_config(weights=str(path)), tmp_path).weights_id
    backbone = backbone_of_head(spec, trained_on, tmp_path)
    assert backbone.precision == "bfloat16" and backbone.weights_id == trained_on
    build_backbone(_config(seed=8), tmp_path).model.save_weights(path)  # the file changed since
    with pytest.raises(WeightsError, match=r"'.*mine.weights.h5' now resolves to other weights .*weights 'file:mine"):
        backbone_of_head(spec, trained_on, tmp_path)


def test_local_weights_file_is_used_and_identified_by_content(tmp_path):
    source = build_backbone(_config(seed=7), tmp_path)
    path = tmp_path / "mine.weights.h5"
    source.model.save_weights(path)
    loaded = build_backbone(_config(weights=str(path), seed=1), tmp_path)
    assert loaded.weights_id.startswith("file:mine.weights.h5:")
    images = np.zeros((1, 32, 32, 3), np.uint8) + 100
    np.testing.assert_allclose(loaded.features(images), source.features(images), rtol=1e-5)


def test_bfloat16_precision_keeps_float32_features_its_own_key_and_the_global_policy(tmp_path):
    import keras

    images = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    full = build_backbone(_config(), tmp_path)
    half = build_backbone(_config(), tmp_path, precision="bfloat16")
    features = half.features(images)
    assert keras.mixed_precision.global_policy().name == "float32"
    assert features.dtype == np.float32 and features.shape == (2, 512)
    assert half.identity["precision"] == "bfloat16" and half.key != full.key
    np.testing.assert_allclose(features, full.features(images), rtol=0.1, atol=0.1 * float(np.abs(features).max()))


def test_random_weights_do_not_depend_on_other_threads_using_python_random(tmp_path):
    import random
    import threading

    images = np.full((1, 32, 32, 3), 90, np.uint8)
    quiet = build_backbone(_config(), tmp_path).features(images)
    stop = threading.Event()

    def noisy():  # what Prefect's and Dask's threads do to the shared generator
        while not stop.is_set():
            random.random()

    thread = threading.Thread(target=noisy)
    thread.start()
    try:
        busy = build_backbone(_config(), tmp_path).features(images)
    finally:
        stop.set()
        thread.join()
    np.testing.assert_array_equal(quiet, busy)


def test_the_dtype_policy_is_scoped_to_the_block_and_to_its_thread():
    import threading

    import keras

    from components.features.backbone import dtype_policy

    with dtype_policy("mixed_bfloat16"):
        elsewhere = []
        thread = threading.Thread(target=lambda: elsewhere.append(keras.config.dtype_policy().name))
        thread.start()
        thread.join()
        assert keras.config.dtype_policy().name == "mixed_bfloat16" and elsewhere == ["float32"]
    assert keras.config.dtype_policy().name == "float32"


def test_building_a_backbone_leaves_the_process_state_alone(tmp_path):
    """No reseeding of the process (NumPy's global generator stays where it was) and no global dtype policy: the
    bfloat16 base computes in bfloat16, the head built after it in float32."""
    import keras

    np.random.seed(12345)
    before = np.random.get_state()[1].copy()
    backbone = build_backbone(_config(), tmp_path, "bfloat16")
    assert backbone.model.layers[1].dtype_policy.name == "mixed_bfloat16"
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    assert keras.config.dtype_policy().name == "float32"
