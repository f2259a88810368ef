import keras
import keras_tuner as kt
import numpy as np

from components.config import load_config
from components.features import FeatureSet
from components.hypermodel import HeadHyperModel, feature_statistics


def _hypermodel(tmp_path, classes=2):
    (tmp_path / "params.yaml").write_text("{}")
    config = load_config(tmp_path / "params.yaml")
    return HeadHyperModel(config.space, config.train, 16, classes)


def test_two_classes_get_one_sigmoid_unit(tmp_path):
    model = _hypermodel(tmp_path).build(kt.HyperParameters())
    assert model.output_shape == (None, 1) and model.layers[-1].activation.__name__ == "sigmoid"
    assert model.loss == "binary_crossentropy"


def test_more_classes_get_softmax(tmp_path):
    model = _hypermodel(tmp_path, classes=3).build(kt.HyperParameters())
    assert model.output_shape == (None, 3) and model.loss == "sparse_categorical_crossentropy"


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


def test_same_hyperparameters_reuse_the_compiled_head_with_fresh_weights(tmp_path):
    hypermodel = _hypermodel(tmp_path)
    hp = kt.HyperParameters()
    hp.Fixed("units", 8)
    hp.Fixed("dropout", 0.5)
    rng = np.random.default_rng(0)
    features, labels = rng.normal(size=(32, 16)).astype(np.float32), rng.integers(0, 2, 32).astype(np.float32)
    first = hypermodel.build(hp)
    first.fit(features, labels, epochs=2, batch_size=8, verbose=0)
    trained = first.get_layer("dense").get_weights()[0].copy()

    second = hypermodel.build(hp)
    assert second is first
    assert not np.allclose(second.get_layer("dense").get_weights()[0], trained)
    assert int(second.optimizer.iterations) == 0
    assert float(second.optimizer.learning_rate) > 0
    history = second.fit(features, labels, epochs=1, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"][0])

    other = kt.HyperParameters()
    other.Fixed("units", 16)
    other.Fixed("dropout", 0.5)
    assert hypermodel.build(other) is not first


def test_early_stopping_ends_an_execution_once_the_objective_stalls():
    from components.hypermodel import early_stopping

    assert early_stopping("val_accuracy", 0) == []
    (callback,) = early_stopping("val_loss", 3)
    assert callback.monitor == "val_loss" and callback.mode == "min" and callback.patience == 3
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    data = np.zeros((8, 4), np.float32)
    history = model.fit(data, np.zeros(8, np.float32), validation_data=(data, np.zeros(8, np.float32)), epochs=20,
                        verbose=0, callbacks=early_stopping("val_loss", 2))
    assert len(history.history["loss"]) == 3  # the loss is 0 from the start: no improvement after epoch 1


def test_best_epoch_checkpoint_holds_the_best_weights_over_a_trials_executions(tmp_path):
    from keras_tuner.src.engine.tuner_utils import SaveBestEpoch

    from components.hypermodel import BestEpochInMemory

    model = _hypermodel(tmp_path).build(kt.HyperParameters())
    checkpoint = SaveBestEpoch(kt.Objective("val_loss", "min"), str(tmp_path / "best.weights.h5"))
    snapshots = {}
    # Two executions sharing one SaveBestEpoch, as KerasTuner runs them: the best is epoch 1 of the first.
    for execution, losses in enumerate(([0.5, 0.3, 0.4], [0.6, 0.35])):
        callback = BestEpochInMemory(checkpoint)
        callback.set_model(model)
        for epoch, loss in enumerate(losses):
            model.set_weights([np.full_like(w, 10 * execution + epoch + 1) for w in model.get_weights()])
            snapshots[(execution, epoch)] = model.get_weights()
            callback.on_epoch_end(epoch, {"val_loss": loss})
        callback.on_train_end()
        assert np.array_equal(model.get_weights()[-1], snapshots[(execution, len(losses) - 1)][-1])  # untouched
    assert checkpoint.best_value == 0.3
    fresh = _hypermodel(tmp_path).build(kt.HyperParameters())
    fresh.load_weights(tmp_path / "best.weights.h5")
    for loaded, best in zip(fresh.get_weights(), snapshots[(0, 1)]):
        assert np.array_equal(loaded, best)


def test_head_trained_on_standardised_features_is_saved_taking_raw_features(tmp_path):
    from components.hypermodel import standardise, with_standardisation

    rng = np.random.default_rng(0)
    raw = (rng.random((40, 16)) * rng.choice([0.0, 1.0, 500.0], 16)).astype(np.float32)  # dead and large features
    data = FeatureSet(raw, (raw[:, 0] > raw[:, 0].mean()).astype(np.int64), [""] * 40, ["a", "b"])
    statistics = feature_statistics(data)
    head = _hypermodel(tmp_path).build(kt.HyperParameters())
    head.fit(standardise(raw, statistics), data.labels.astype(np.float32), epochs=2, verbose=0)

    served = with_standardisation(head, statistics)
    assert served.layers[1].name == "standardise"
    served.save(tmp_path / "head.keras")
    loaded = keras.models.load_model(tmp_path / "head.keras", safe_mode=True)
    expected = head.predict(standardise(raw, statistics), verbose=0)
    np.testing.assert_allclose(loaded.predict(raw, verbose=0), expected, rtol=1e-5, atol=1e-6)
