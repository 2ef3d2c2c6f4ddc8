"""The network builders: published parameter counts, layer names, stems, on-device normalisation."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras", reason="the training extra (Keras 3) is not installed")

from dsprep.errors import UsageError  # noqa: E402
from dsprep.train.models import alexnet, build_model, count_params, resnet, smallnet  # noqa: E402


@pytest.mark.parametrize(
    ("depth", "published"),
    # torchvision's counts at 1000 classes and 224x224 (trainable parameters, bias-free convs).
    [(18, 11_689_512), (34, 21_797_672), (50, 25_557_032)],
)
def test_resnet_matches_published_parameter_count(depth, published):
    model = resnet((224, 224, 3), 1000, depth)
    assert count_params(model) == published
    assert model.output_shape == (None, 1000)


def _conv(k, cin, cout, bias=True):
    return k * k * cin * cout + (cout if bias else 0)


def test_alexnet_parameter_count_follows_the_architecture():
    # Independent reference: the layer arithmetic of the batch-normalised AlexNet at 227x227,
    # here at a quarter of the width and 256 dense units to keep the test quick.
    c1, c2, c3, c4, c5, dense, classes = 24, 64, 96, 96, 64, 256, 10
    convs = (_conv(11, 3, c1) + _conv(5, c1, c2) + _conv(3, c2, c3) + _conv(3, c3, c4)
             + _conv(3, c4, c5))
    bn = 2 * (c1 + c2 + c3 + c4 + c5) + 2 * 2 * dense
    spatial = 6  # 227 -> 57 (stride 4) -> 28 -> 13 -> 6 (three 3x3/2 poolings)
    dense_params = (spatial * spatial * c5 * dense + dense) + (dense * dense + dense)
    expected = convs + bn + dense_params + dense * classes + classes
    model = alexnet((227, 227, 3), classes, width=0.25, dense=dense)
    assert count_params(model) == expected


def test_smallnet_matches_the_published_count():
    # The dogs-vs-cats convnet has 3,453,121 parameters with one sigmoid unit; a two-way
    # softmax adds one weight per hidden unit and one bias: 512 + 1.
    model = smallnet((150, 150, 3), 2)
    assert count_params(model) == 3_453_121 + 513


def test_resnet_layer_names_are_stable_and_structured():
    names = [layer.name for layer in resnet((224, 224, 3), 10, 50, width=8).layers]
    for expected in ("stem_conv", "stem_bn", "stem_pool", "stage2_block1_1_conv",
                     "stage2_block1_proj_conv", "stage3_block1_proj_bn", "stage5_block3_3_conv",
                     "stage5_block3_add", "avg_pool", "logits", "predictions"):
        assert expected in names
    again = [layer.name for layer in resnet((224, 224, 3), 10, 50, width=8).layers]
    assert names == again


def test_small_inputs_get_the_small_stem():
    small = resnet((32, 32, 3), 10, 18, width=8)
    names = {layer.name for layer in small.layers}
    assert "stem_pool" not in names
    assert tuple(small.get_layer("stem_conv").kernel.shape) == (3, 3, 3, 8)
    # Three stride-2 stages after a stride-1 stem: 32 -> 4.
    assert tuple(small.get_layer("stage5_block2_out").output.shape[1:3]) == (4, 4)
    large = resnet((64, 64, 3), 10, 18, width=8)
    assert tuple(large.get_layer("stem_conv").kernel.shape) == (7, 7, 3, 8)
    assert tuple(large.get_layer("stage5_block2_out").output.shape[1:3]) == (2, 2)


def test_preactivation_resnet_builds_with_its_own_layout():
    model = build_model("preresnet18", (32, 32, 3), 5, width=8)
    names = {layer.name for layer in model.layers}
    assert {"post_bn", "stage2_block1_pre_bn"} <= names
    assert "stem_bn" not in names
    assert model.output_shape == (None, 5)


def test_mean_subtraction_layer_normalises_uint8_on_the_device():
    mean, scale = (10.0, 20.0, 30.0), 0.5
    model = build_model("resnet18", (32, 32, 3), 3, width=4, mean=mean, scale=scale,
                        input_dtype="uint8")
    probe = keras.Model(model.input, model.get_layer("mean_subtraction").output)
    x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    expected = (x.astype(np.float64) - np.array(mean)) * scale
    got = keras.ops.convert_to_numpy(probe(x))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_softmax_stays_float32_under_mixed_precision():
    try:
        keras.mixed_precision.set_global_policy("mixed_float16")
        model = smallnet((48, 48, 3), 2, width=4, dense=8)
        assert model.get_layer("block1_conv").compute_dtype == "float16"
        assert model.get_layer("predictions").compute_dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: build_model("vgg16", (64, 64, 3), 2), "not one of"),
        (lambda: build_model("resnet20", (64, 64, 3), 2), "not one of"),
        (lambda: resnet((64, 64, 3), 2, 20), "depth 20"),
        (lambda: alexnet((32, 32, 3), 2), "at least 63x63"),
        (lambda: smallnet((32, 32, 3), 2), "at least 46x46"),
        # Split-folder data is sized by --image-size, which the advice names.
        (lambda: smallnet((32, 32, 3), 2), "a larger --image-size for a split folder"),
        (lambda: smallnet((64, 64), 2), "not \\(height, width, 3\\)"),
        (lambda: build_model("resnet18", (64, 64, 3), 2, width=2.9), "whole number"),
        (lambda: build_model("smallnet", (64, 64, 3), 2, width=0.5), "whole number"),
        (lambda: build_model("resnet18", (64, 64, 3), 2, width=float("inf")), "finite"),
        (lambda: build_model("alexnet", (64, 64, 3), 2, width=float("nan")), "finite"),
    ],
)
def test_bad_model_arguments_raise_usage_errors(call, match):
    with pytest.raises(UsageError, match=match):
        call()


def test_train_help_names_each_models_smallest_images():
    # A build at --size 40 for smallnet (46) was refused only once training began.
    from click.testing import CliRunner

    from dsprep.cli import main

    shown = " ".join(CliRunner().invoke(main, ["train", "--help"]).output.split())
    for name, side in (("alexnet", 63), ("smallnet", 46)):
        assert f"{name} takes images of {side} pixels a side or more" in shown
        with pytest.raises(UsageError, match=f"at least {side}x{side}"):
            build_model(name, (side - 1, side - 1, 3), 2)
        build_model(name, (side, side, 3), 2, width=4)
