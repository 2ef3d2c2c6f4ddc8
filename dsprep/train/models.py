"""Network builders (AlexNet, ResNet, a small convnet) with stable, named layers, in Keras 3.

Every builder takes an optional on-device input normalisation so raw uint8 batches can be fed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import keras
from keras import layers

from ..errors import UsageError
from .options import MIN_SIDES, MODEL_NAMES

# depth -> (block kind, blocks per stage), as in He et al. 2015, table 1.
RESNET_STAGES = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
# Below this side length the ImageNet stem (7x7/2 conv + 3x3/2 pool) throws away too much.
SMALL_INPUT = 64


def _l2(reg: float):
    return keras.regularizers.L2(reg) if reg else None


def _inputs(input_shape: Sequence[int], mean, scale: float,
            input_dtype: str):
    """The model input, followed by the on-device mean subtraction when a mean is given."""
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise UsageError(f"input_shape {tuple(input_shape)} is not (height, width, 3)")
    inputs = keras.Input(shape=tuple(int(s) for s in input_shape), dtype=input_dtype,
                         name="image")
    x = inputs
    if mean is not None or scale != 1.0 or input_dtype != "float32":
        from ..adapters import MeanSubtraction

        # The layer reads a means.json path or dict as well as three numbers.
        x = MeanSubtraction(mean if mean is not None else [0.0, 0.0, 0.0], scale=scale,
                            name="mean_subtraction")(x)
    return inputs, x


def _classifier(x, classes: int, reg: float):
    x = layers.Dense(classes, kernel_regularizer=_l2(reg), name="logits")(x)
    # float32 softmax keeps mixed-precision training numerically safe.
    return layers.Activation("softmax", dtype="float32", name="predictions")(x)


def _check_size(name: str, input_shape: Sequence[int], minimum: int) -> None:
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise UsageError(f"input_shape {tuple(input_shape)} is not (height, width, 3)")
    if min(input_shape[:2]) < minimum:
        raise UsageError(
            f"{name} needs images of at least {minimum}x{minimum} pixels, got "
            f"{input_shape[0]}x{input_shape[1]}; give it larger images (a larger --crop if "
            "one is given, a larger --image-size for a split folder, or HDF5 data built at a "
            "larger size) or use another model"
        )


def alexnet(
    input_shape: Sequence[int] = (227, 227, 3),
    classes: int = 1000,
    *,
    reg: float = 2e-4,
    width: float = 1.0,
    dense: int | None = None,
    mean: Sequence[float] | dict | str | os.PathLike | None = None,
    scale: float = 1.0,
    input_dtype: str = "float32",
) -> keras.Model:
    """Batch-normalised AlexNet: five convolutions, three poolings, two dense layers.

    Args:
        input_shape: (height, width, 3); at least 63 pixels a side.
        classes: number of output classes.
        reg: L2 weight on every kernel.
        width: multiplier on every layer's filters and units (1.0 is the published network).
        dense: units of each of the two hidden dense layers (default 4096 times ``width``).
        mean: RGB mean subtracted on the device (then uint8 batches can be fed): three
            numbers, a means.json dict or a path to one.
        scale: factor applied after the mean subtraction.
        input_dtype: dtype of the model input ("float32" or "uint8").
    """
    _check_size("alexnet", input_shape, MIN_SIDES["alexnet"])
    inputs, x = _inputs(input_shape, mean, scale, input_dtype)

    def conv(x, filters, size, name, strides=1):
        x = layers.Conv2D(max(1, round(filters * width)), size, strides=strides, padding="same",
                          kernel_regularizer=_l2(reg), name=f"{name}_conv")(x)
        x = layers.Activation("relu", name=f"{name}_relu")(x)
        return layers.BatchNormalization(name=f"{name}_bn")(x)

    x = conv(x, 96, 11, "block1_1", strides=4)
    x = layers.MaxPooling2D(3, strides=2, name="block1_pool")(x)
    x = layers.Dropout(0.25, name="block1_drop")(x)
    x = conv(x, 256, 5, "block2_1")
    x = layers.MaxPooling2D(3, strides=2, name="block2_pool")(x)
    x = layers.Dropout(0.25, name="block2_drop")(x)
    x = conv(x, 384, 3, "block3_1")
    x = conv(x, 384, 3, "block3_2")
    x = conv(x, 256, 3, "block3_3")
    x = layers.MaxPooling2D(3, strides=2, name="block3_pool")(x)
    x = layers.Dropout(0.25, name="block3_drop")(x)
    x = layers.Flatten(name="flatten")(x)
    dense = dense or max(1, round(4096 * width))
    for i in (1, 2):
        x = layers.Dense(dense, kernel_regularizer=_l2(reg), name=f"fc{i}_dense")(x)
        x = layers.Activation("relu", name=f"fc{i}_relu")(x)
        x = layers.BatchNormalization(name=f"fc{i}_bn")(x)
        x = layers.Dropout(0.5, name=f"fc{i}_drop")(x)
    return keras.Model(inputs, _classifier(x, classes, reg), name="alexnet")


def smallnet(
    input_shape: Sequence[int] = (150, 150, 3),
    classes: int = 2,
    *,
    reg: float = 0.0,
    width: int = 32,
    dense: int = 512,
    mean: Sequence[float] | dict | str | os.PathLike | None = None,
    scale: float = 1.0,
    input_dtype: str = "float32",
) -> keras.Model:
    """The small convnet of the dogs-vs-cats chapter: four 3x3 convolutions with 2x2 pooling.

    Args:
        input_shape: (height, width, 3); at least 46 pixels a side.
        classes: number of output classes.
        reg: L2 weight on every kernel (0 for none, as published).
        width: filters of the first convolution (32 published); the others are 2x, 4x, 4x.
        dense: units of the hidden dense layer.
        mean: RGB mean subtracted on the device: three numbers, a means.json dict or a path
            to one.
        scale: factor applied after the mean subtraction.
        input_dtype: dtype of the model input.
    """
    _check_size("smallnet", input_shape, MIN_SIDES["smallnet"])
    inputs, x = _inputs(input_shape, mean, scale, input_dtype)
    for i, mult in enumerate((1, 2, 4, 4), start=1):
        x = layers.Conv2D(width * mult, 3, activation="relu", kernel_regularizer=_l2(reg),
                          name=f"block{i}_conv")(x)
        x = layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(0.5, name="flatten_drop")(x)
    x = layers.Dense(dense, activation="relu", kernel_regularizer=_l2(reg), name="fc1_dense")(x)
    return keras.Model(inputs, _classifier(x, classes, reg), name="smallnet")


def _conv_bn(x, filters, size, strides, name, reg, bn=True):
    x = layers.Conv2D(filters, size, strides=strides, padding="same", use_bias=False,
                      kernel_initializer="he_normal", kernel_regularizer=_l2(reg),
                      name=f"{name}_conv")(x)
    if bn:
        x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_bn")(x)
    return x


def _bn_relu(x, name):
    x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _block(x, filters, strides, kind, preact, name, reg):
    """One residual block (basic: two 3x3; bottleneck: 1x1-3x3-1x1 with 4x expansion)."""
    out_filters = filters * 4 if kind == "bottleneck" else filters
    project = strides != 1 or x.shape[-1] != out_filters
    if kind == "basic":
        plan = [(filters, 3, strides), (filters, 3, 1)]
    else:
        # Stride on the 3x3 convolution ("ResNet v1.5", as torchvision and most published weights).
        plan = [(filters, 1, 1), (filters, 3, strides), (out_filters, 1, 1)]
    if preact:
        pre = _bn_relu(x, f"{name}_pre")
        shortcut = (_conv_bn(pre, out_filters, 1, strides, f"{name}_proj", reg, bn=False)
                    if project else x)
        y = pre
        for i, (f, k, s) in enumerate(plan, start=1):
            if i > 1:
                y = _bn_relu(y, f"{name}_{i - 1}")
            y = _conv_bn(y, f, k, s, f"{name}_{i}", reg, bn=False)
        return layers.Add(name=f"{name}_add")([shortcut, y])
    shortcut = _conv_bn(x, out_filters, 1, strides, f"{name}_proj", reg) if project else x
    y = x
    for i, (f, k, s) in enumerate(plan, start=1):
        y = _conv_bn(y, f, k, s, f"{name}_{i}", reg)
        if i < len(plan):
            y = layers.Activation("relu", name=f"{name}_{i}_relu")(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def resnet(
    input_shape: Sequence[int] = (224, 224, 3),
    classes: int = 1000,
    depth: int = 50,
    *,
    preact: bool = False,
    reg: float = 1e-4,
    width: int = 64,
    mean: Sequence[float] | dict | str | os.PathLike | None = None,
    scale: float = 1.0,
    input_dtype: str = "float32",
) -> keras.Model:
    """A ResNet of depth 18, 34 (basic blocks), 50, 101 or 152 (bottlenecks), bias-free convs.

    Inputs smaller than 64 pixels a side get a 3x3/1 stem without pooling instead of the ImageNet
    7x7/2 stem and 3x3/2 pooling.

    Args:
        input_shape: (height, width, 3).
        classes: number of output classes.
        depth: 18, 34, 50, 101 or 152.
        preact: use pre-activation blocks (He et al. 2016) instead of the original ones.
        reg: L2 weight on every kernel.
        width: filters of the first stage (64 published); stages double it.
        mean: RGB mean subtracted on the device: three numbers, a means.json dict or a path
            to one.
        scale: factor applied after the mean subtraction.
        input_dtype: dtype of the model input.
    """
    if depth not in RESNET_STAGES:
        raise UsageError(f"ResNet depth {depth} is not one of {sorted(RESNET_STAGES)}")
    kind, stages = RESNET_STAGES[depth]
    inputs, x = _inputs(input_shape, mean, scale, input_dtype)
    small = min(input_shape[:2]) < SMALL_INPUT
    if small:
        x = _conv_bn(x, width, 3, 1, "stem", reg, bn=not preact)
    else:
        x = _conv_bn(x, width, 7, 2, "stem", reg, bn=not preact)
    if not preact:
        x = layers.Activation("relu", name="stem_relu")(x)
    if not small:
        x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for s, blocks in enumerate(stages):
        for b in range(blocks):
            strides = 2 if (b == 0 and s > 0) else 1
            x = _block(x, width * 2**s, strides, kind, preact, f"stage{s + 2}_block{b + 1}", reg)
    if preact:
        x = _bn_relu(x, "post")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    name = f"{'pre' if preact else ''}resnet{depth}"
    return keras.Model(inputs, _classifier(x, classes, reg), name=name)


def build_model(
    name: str,
    input_shape: Sequence[int],
    classes: int,
    *,
    reg: float | None = None,
    width: float | None = None,
    mean: Sequence[float] | dict | str | os.PathLike | None = None,
    scale: float = 1.0,
    input_dtype: str = "float32",
) -> keras.Model:
    """Build a model by name: ``alexnet``, ``smallnet``, ``resnet18`` ... ``preresnet152``.

    ``reg`` and ``width`` default to each builder's published values when None.
    """
    extra = {"mean": mean, "scale": scale, "input_dtype": input_dtype}
    if reg is not None:
        extra["reg"] = float(reg)
    if width is not None and not (math.isfinite(float(width)) and float(width) > 0):
        raise UsageError(f"width {width} must be a finite number above 0")
    if name == "alexnet":
        if width is not None:
            extra["width"] = float(width)
        return alexnet(input_shape, classes, **extra)
    if width is not None:
        if float(width) != int(width) or int(width) < 1:
            raise UsageError(f"width {width:g} for {name} is a number of filters: give a whole "
                             "number, 1 or more (it is a multiplier only for alexnet)")
        extra["width"] = int(width)
    if name == "smallnet":
        return smallnet(input_shape, classes, **extra)
    for prefix, preact in (("preresnet", True), ("resnet", False)):
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            depth = int(name[len(prefix):])
            if depth in RESNET_STAGES:
                return resnet(input_shape, classes, depth, preact=preact, **extra)
    raise UsageError(f"model {name!r} is not one of {', '.join(MODEL_NAMES)}")


def count_params(model: keras.Model, trainable_only: bool = True) -> int:
    """Parameters of a model (trainable only by default, as published counts are)."""
    weights = model.trainable_weights if trainable_only else model.weights
    total = 0
    for w in weights:
        n = 1
        for d in w.shape:
            n *= int(d)
        total += n
    return total
