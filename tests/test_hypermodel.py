import keras
import keras_tuner as kt
import numpy as np

from components.config import load_config
from components.features.store import FeatureSet
from components.search.space import HeadHyperModel, feature_statistics


def _hypermodel(tmp_path, classes=2):
    (tmp_path / "params.yaml").write_text("{}")
    config = load_config(tmp_path / "params.yaml")
    return HeadHyperModel(config.space, 16, classes)


def test_two_classes_get_one_sigmoid_unit(tmp_path):
    model = _hypermodel(tmp_path).build(kt.HyperParameters())
    assert model.output_shape == (None, 1) and model.layers[-1].activation.__name__ == "sigmoid"


def test_more_classes_get_softmax(tmp_path):
    model = _hypermodel(tmp_path, classes=3).build(kt.HyperParameters())
    assert model.output_shape == (None, 3) and model.layers[-1].activation.__name__ == "softmax"


def test_extra_layer_is_only_offered_under_large_first_layers(tmp_path):
    hypermodel = _hypermodel(tmp_path)
    for units, active in ((8, False), (32, True), (64, True)):
        hp = kt.HyperParameters()
        hp.Fixed("units", units)
        hypermodel.build(hp)
        assert hp.is_active("extra_units") is active
    hp = kt.HyperParameters()
    hp.Fixed("units", 64)
    hp.Fixed("extra_units", 8)
    names = [layer.name for layer in hypermodel.build(hp).layers]
    assert "extra_dense" in names


def test_feature_statistics_floor_dead_features():
    data = FeatureSet(np.array([[0.0, 1.0], [0.0, 3.0]], np.float32), np.array([0, 1]), ["a", "b"], ["x", "y"])
    mean, variance = feature_statistics(data)
    assert mean.tolist() == [0.0, 2.0] and variance[0] > 0 and variance[1] == 1.0


def test_head_trained_on_standardised_features_is_saved_taking_raw_features(tmp_path):
    from components.search.space import standardise, with_standardisation

    rng = np.random.default_rng(0)
    raw = (rng.random((40, 16)) * rng.choice([0.0, 1.0, 500.0], 16)).astype(np.float32)  # dead and large features
    data = FeatureSet(raw, (raw[:, 0] > raw[:, 0].mean()).astype(np.int64), [""] * 40, ["a", "b"])
    statistics = feature_statistics(data)
    head = _hypermodel(tmp_path).build(kt.HyperParameters())
    head.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in head.get_weights()])  # as if trained

    served = with_standardisation(head, statistics)
    assert served.layers[1].name == "standardise"
    served.save(tmp_path / "head.keras")
    loaded = keras.models.load_model(tmp_path / "head.keras", safe_mode=True)
    expected = head.predict(standardise(raw, statistics), verbose=0)
    np.testing.assert_allclose(loaded.predict(raw, verbose=0), expected, rtol=1e-5, atol=1e-6)
