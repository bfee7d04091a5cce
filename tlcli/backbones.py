"""The backbone registry: one declarative `BackboneSpec` per Keras Application.

Adding a backbone is one entry in `BACKBONES`. Nothing here imports TensorFlow until a
backbone is actually built, so `tlcli backbones` stays instant.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass

from tlcli.errors import TlcliError, unknown_name


@dataclass(frozen=True)
class BackboneSpec:
    """What tlcli needs to know to build and fine-tune one backbone."""

    constructor: str  # "module:attribute", resolved lazily with importlib
    preprocess: str  # "tf" (-1..1), "torch" (ImageNet mean/std), "caffe" (BGR mean), "none" (built in)
    default_size: int
    min_size: int
    features: int  # channels of the pooled feature vector
    unfreeze: float = 0.3  # fraction of the backbone's layers trained in phase 2
    # ImageNet weights that do not depend on input size (fully convolutional backbones): the
    # backbone is built size-agnostic so Keras loads its default weight file for any --image-size.
    size_agnostic_weights: bool = True
    pretrained: bool = True  # False: no ImageNet weights exist (the test backbone)


_KA = "keras.applications:"

BACKBONES: dict[str, BackboneSpec] = {
    "xception": BackboneSpec(_KA + "Xception", "tf", 299, 71, 2048),
    "vgg16": BackboneSpec(_KA + "VGG16", "caffe", 224, 32, 512),
    "vgg19": BackboneSpec(_KA + "VGG19", "caffe", 224, 32, 512),
    "resnet50": BackboneSpec(_KA + "ResNet50", "caffe", 224, 32, 2048),
    "resnet101": BackboneSpec(_KA + "ResNet101", "caffe", 224, 32, 2048),
    "resnet152": BackboneSpec(_KA + "ResNet152", "caffe", 224, 32, 2048),
    "resnet50_v2": BackboneSpec(_KA + "ResNet50V2", "tf", 224, 32, 2048),
    "resnet101_v2": BackboneSpec(_KA + "ResNet101V2", "tf", 224, 32, 2048),
    "resnet152_v2": BackboneSpec(_KA + "ResNet152V2", "tf", 224, 32, 2048),
    "inception_v3": BackboneSpec(_KA + "InceptionV3", "tf", 299, 75, 2048),
    "inception_resnet_v2": BackboneSpec(_KA + "InceptionResNetV2", "tf", 299, 75, 1536),
    "mobilenet": BackboneSpec(_KA + "MobileNet", "tf", 224, 32, 1024),
    # 0.35: the keras.io guide's "fine-tune from layer 100 of 154".
    "mobilenet_v2": BackboneSpec(_KA + "MobileNetV2", "tf", 224, 32, 1280, unfreeze=0.35),
    "mobilenet_v3_small": BackboneSpec(_KA + "MobileNetV3Small", "none", 224, 32, 576),
    "mobilenet_v3_large": BackboneSpec(_KA + "MobileNetV3Large", "none", 224, 32, 960),
    "densenet121": BackboneSpec(_KA + "DenseNet121", "torch", 224, 32, 1024),
    "densenet169": BackboneSpec(_KA + "DenseNet169", "torch", 224, 32, 1664),
    "densenet201": BackboneSpec(_KA + "DenseNet201", "torch", 224, 32, 1920),
    # NASNet's ImageNet files exist only for its default size.
    "nasnet_mobile": BackboneSpec(_KA + "NASNetMobile", "tf", 224, 32, 1056, size_agnostic_weights=False),
    "nasnet_large": BackboneSpec(_KA + "NASNetLarge", "tf", 331, 32, 4032, size_agnostic_weights=False),
    "efficientnet_b0": BackboneSpec(_KA + "EfficientNetB0", "none", 224, 32, 1280),
    "efficientnet_b1": BackboneSpec(_KA + "EfficientNetB1", "none", 240, 32, 1280),
    "efficientnet_b2": BackboneSpec(_KA + "EfficientNetB2", "none", 260, 32, 1408),
    "efficientnet_b3": BackboneSpec(_KA + "EfficientNetB3", "none", 300, 32, 1536),
    "efficientnet_b4": BackboneSpec(_KA + "EfficientNetB4", "none", 380, 32, 1792),
    "efficientnet_b5": BackboneSpec(_KA + "EfficientNetB5", "none", 456, 32, 2048),
    "efficientnet_b6": BackboneSpec(_KA + "EfficientNetB6", "none", 528, 32, 2304),
    "efficientnet_b7": BackboneSpec(_KA + "EfficientNetB7", "none", 600, 32, 2560),
    "efficientnetv2_b0": BackboneSpec(_KA + "EfficientNetV2B0", "none", 224, 32, 1280),
    "efficientnetv2_b1": BackboneSpec(_KA + "EfficientNetV2B1", "none", 240, 32, 1280),
    "efficientnetv2_b2": BackboneSpec(_KA + "EfficientNetV2B2", "none", 260, 32, 1408),
    "efficientnetv2_b3": BackboneSpec(_KA + "EfficientNetV2B3", "none", 300, 32, 1536),
    "efficientnetv2_s": BackboneSpec(_KA + "EfficientNetV2S", "none", 384, 32, 1280),
    "efficientnetv2_m": BackboneSpec(_KA + "EfficientNetV2M", "none", 480, 32, 1280),
    "efficientnetv2_l": BackboneSpec(_KA + "EfficientNetV2L", "none", 480, 32, 1280),
    "convnext_tiny": BackboneSpec(_KA + "ConvNeXtTiny", "none", 224, 32, 768),
    "convnext_small": BackboneSpec(_KA + "ConvNeXtSmall", "none", 224, 32, 768),
    "convnext_base": BackboneSpec(_KA + "ConvNeXtBase", "none", 224, 32, 1024),
    "convnext_large": BackboneSpec(_KA + "ConvNeXtLarge", "none", 224, 32, 1536),
    "convnext_xlarge": BackboneSpec(_KA + "ConvNeXtXLarge", "none", 224, 32, 2048),
    # A few-layer CNN with no pretrained weights: keeps tests and the offline demo to seconds.
    "tiny": BackboneSpec("tlcli.backbones:tiny_cnn", "tf", 64, 16, 64, unfreeze=0.5, pretrained=False),
}


def get_spec(name: str) -> BackboneSpec:
    """The registry entry for `name`, or an error suggesting the closest names."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise unknown_name("backbone", name, BACKBONES, "Run `tlcli backbones` to list them.") from None


def keras_cache_dir() -> str:
    """Where Keras looks for (and downloads) weight files: $KERAS_HOME/models, default ~/.keras/models.

    Keras reads KERAS_HOME once, when it is first imported; ask it rather than the environment.
    """
    import sys

    if "keras" in sys.modules:
        from keras.src.backend import config

        return os.path.join(config.keras_home(), "models")
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models")


def _constructor(spec: BackboneSpec):
    module, attr = spec.constructor.split(":")
    return getattr(importlib.import_module(module), attr)


def build_backbone(name: str, weights: str, image_size: int):
    """Build backbone `name` without its top, with `weights` = "imagenet", "none" or a file path.

    The result is a Keras model from images (already preprocessed) to its last feature map.
    """
    spec = get_spec(name)
    if image_size < spec.min_size:
        raise TlcliError(f"--image-size {image_size} is below {name}'s minimum of {spec.min_size}.")
    # "none" preprocessing entries (EfficientNet, ConvNeXt, MobileNetV3) rescale inside the
    # backbone by Keras's default, so they take raw 0-255 pixels.
    kwargs = {"include_top": False}
    if weights == "imagenet":
        if not spec.pretrained:
            raise TlcliError(f"backbone '{name}' has no ImageNet weights; use --weights none.")
        sized = (None, None, 3) if spec.size_agnostic_weights else (image_size, image_size, 3)
        if not spec.size_agnostic_weights and image_size != spec.default_size:
            raise TlcliError(
                f"{name}'s ImageNet weights exist only for {spec.default_size} px; "
                f"use --image-size {spec.default_size} or --weights none."
            )
        return _build_with_imagenet(spec, name, sized, kwargs)
    backbone = _constructor(spec)(weights=None, input_shape=(image_size, image_size, 3), **kwargs)
    if weights not in ("none", None):
        _load_weights_file(backbone, weights, name)
    return backbone


def _build_with_imagenet(spec: BackboneSpec, name: str, input_shape, kwargs):
    import warnings

    try:
        with warnings.catch_warnings():
            # MobileNet warns that it falls back to its 224 px weights, which is what we want:
            # those weights are size-independent and the 224 file is the one people have cached.
            warnings.simplefilter("ignore", UserWarning)
            return _constructor(spec)(weights="imagenet", input_shape=input_shape, **kwargs)
    except Exception as error:  # Keras raises a bare Exception when the download fails
        message = str(error)
        if "URL fetch failure" not in message and "fetch" not in message.lower():
            raise
        url = re.search(r"https?://\S+?\.h5", message)
        filename = url.group(0).rsplit("/", 1)[1] if url else f"the {name} weight file"
        raise TlcliError(
            f"could not download ImageNet weights for {name} (no network?): put {filename} in "
            f"{keras_cache_dir()} (set KERAS_HOME to use another cache), "
            f"or pass --weights PATH or --weights none."
        ) from None


def _load_weights_file(backbone, path: str, name: str) -> None:
    if not os.path.isfile(path):
        raise TlcliError(f"--weights: no such file '{path}' (use imagenet, none or a weights file).")
    try:
        backbone.load_weights(path)
    except Exception as error:  # Keras raises many types for a file that does not match
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TlcliError(f"--weights {path} does not fit backbone {name}: {first_line}") from None


def tiny_cnn(weights=None, input_shape=(64, 64, 3), include_top=False, **_):
    """A small fully convolutional backbone for tests and demos (no pretrained weights)."""
    import keras
    from keras import layers

    inputs = keras.Input(input_shape)
    x = inputs
    for i, filters in enumerate((16, 32, 64)):
        x = layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False, name=f"conv{i}")(x)
        # Momentum 0.9: a from-scratch model on a few dozen steps needs statistics that keep up.
        x = layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
    return keras.Model(inputs, x, name="tiny_cnn")
