"""The model fine-tuning trains: flattened boundary maps in, reshaped; the backbone's layers after the boundary with
their pretrained weights (BatchNorm kept in inference mode, as Keras advises); the pooling the head was searched
with; the champion head with its trained weights and its fixed standardisation. It takes what the boundary
backbone's features() gives, so evaluation, prediction and serving run it as they run a head."""
from __future__ import annotations

import math

import keras

from components.features.backbone import POOLING_REDUCTIONS, Backbone, dtype_policy


def pooling_layer(pooling: str):
    """backbone.pooling as Keras layers: the reductions POOLING_REDUCTIONS names, as pool_feature_map applies them."""
    reductions = POOLING_REDUCTIONS[pooling]
    if not reductions:
        return keras.layers.Flatten(name="pool")
    layers = {"avg": keras.layers.GlobalAveragePooling2D, "max": keras.layers.GlobalMaxPooling2D}
    if len(reductions) == 1:
        return layers[reductions[0]](name="pool")

    def concatenated(maps):
        return keras.layers.Concatenate(name="pool")([layers[name](name=f"pool_{name}")(maps) for name in reductions])
    return concatenated


def build_finetune_model(backbone: Backbone, boundary: str, head: keras.Model) -> keras.Model:
    """`backbone`: the base the head's features came from (its layer, pooling and precision: bfloat16 layers where
    extraction ran in bfloat16); `head`: the saved head (raw features in)."""
    base = backbone.model
    maps = base.get_layer(boundary).output
    shape = tuple(int(d) for d in maps.shape[1:])
    top = keras.Model(maps, base.output, name="top")
    for layer in top.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False  # inference mode: moving statistics neither used per batch nor updated
    with dtype_policy("mixed_bfloat16" if backbone.precision == "bfloat16" else "float32"):
        inputs = keras.Input((math.prod(shape),), name="features")
        x = keras.layers.Reshape(shape, name="boundary_maps")(inputs)
        x = top(x)
    x = pooling_layer(backbone.config.pooling)(keras.layers.Activation("linear", dtype="float32", name="cast")(x))
    for layer in head.layers:
        if isinstance(layer, keras.layers.Normalization):
            layer.trainable = False
    return keras.Model(inputs, head(x), name="ffx_finetuned")
