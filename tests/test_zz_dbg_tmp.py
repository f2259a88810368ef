import numpy as np, h5py
from components.backbone import build_backbone
from components.config import BackboneConfig
def _config(**o):
    v = {"name": "vgg19", "weights": "none", "input_size": 32, "seed": 0}; v.update(o); return BackboneConfig(**v)
def test_x(tmp_path):
    source = build_backbone(_config(seed=7), tmp_path)
    path = tmp_path / "mine.weights.h5"
    m = source.model
    print("names", [l.name for l in m.layers][:3], m.name)
    m.save_weights(path)
    with h5py.File(path) as f:
        keys = []; f.visit(keys.append); print(keys[:8])
    import keras
    m2 = keras.applications.VGG19(include_top=False, weights=None, input_shape=(32,32,3))
    print("names2", [l.name for l in m2.layers][:3], m2.name)
    m2.load_weights(path)
    print("direct equal", np.allclose(m2.get_layer("block1_conv1").get_weights()[0], m.get_layer("block1_conv1").get_weights()[0]))
