"""The classifier: raw RGB in, class probabilities out.

    image (any size, 0-255) -> Resize -> Preprocess -> backbone -> pooling -> [dropout -> dense]

The bracketed head is also a model of its own (`head_model`), sharing the same layers, so the
head can be trained on cached backbone features and the classifier uses the result as is.
"""

from __future__ import annotations

import keras
from keras import layers

from tlcli.backbones import build_backbone, get_spec
from tlcli.images import _REDUCING_GAP  # the decoder's: serving must shrink as training did

BACKBONE_NAME = "backbone"

# Per-channel constants of the preprocessing conventions Keras Applications use.
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="tlcli")
class Resize(layers.Layer):
    """Any image to `height` x `width`, computing what tlcli.data's decoder computes with Pillow.

    Training sees images that Pillow shrank (block-average by a whole factor while at least
    `reducing_gap` times the target remains, then bilinear with antialiasing, stretched to the
    target). A model given full-size pixels must see the same picture, so this layer does the
    same arithmetic in the graph (Keras's Resizing is bilinear without antialiasing: a large
    photo aliases). Pillow's rounding to 8 bits between passes is reproduced too, so the two
    agree to within a level or so. JPEG files are the exception: the decoder already shrinks
    them by 2, 4 or 8 in the DCT (Image.draft), which the model cannot know about.
    Only TFLite builtin ops are used (tf.image's antialiased resize is not one). An image already
    at the target size passes through unchanged (when its size is known only at run time, as
    in a SavedModel, fractional pixel values are rounded to whole levels, as Pillow's would be).

    It has no `training` argument: Keras's Resizing defaults to training=True and hands that to
    every later layer of a plain `model(x)` call, running BatchNorm and Dropout in training mode.
    """

    def __init__(self, height: int, width: int, reducing_gap: int = _REDUCING_GAP, **kwargs):
        super().__init__(**kwargs)
        self.height, self.width, self.reducing_gap = int(height), int(width), int(reducing_gap)

    def call(self, images):
        if tuple(images.shape[1:3]) == (self.height, self.width):
            return keras.ops.cast(images, self.compute_dtype)
        x = keras.ops.cast(images, "float32")  # 0-255 sums stay exact; float16 would round them
        x, height = self._reduce(x, 1, self.height)
        x, width = self._reduce(x, 2, self.width)
        # Pillow rounds to 8 bits after reducing and after each pass (width first, then height).
        x = self._round(x)
        x = self._round(self._resample(x, 2, self.width, width))
        x = self._round(self._resample(x, 1, self.height, height))
        return keras.ops.cast(x, self.compute_dtype)

    @staticmethod
    def _round(x):
        return keras.ops.floor(x + 0.5)  # half up, as Pillow's fixed-point arithmetic

    def _reduce(self, x, axis: int, size: int):
        """Block-average `axis` of an NHWC batch by the whole factor Pillow would use (1 when
        less than `reducing_gap` times `size` is there); returns it and its true extent in
        reduced pixels (the last block may be partial: it averages only the pixels it has)."""
        ops = keras.ops
        shape = list(ops.shape(x))
        length = shape[axis]
        factor = ops.maximum(length // (size * self.reducing_gap), 1)
        reduced = (length + factor - 1) // factor
        padding = [[0, 0]] * 4
        padding[axis] = [0, reduced * factor - length]
        blocks = shape[:axis] + [reduced, factor] + shape[axis + 1:]
        x = ops.sum(ops.reshape(ops.pad(x, padding), blocks), axis=axis + 1)
        last = ops.cast(length - (reduced - 1) * factor, "float32")
        counts = ops.where(ops.arange(reduced) == reduced - 1, last, ops.cast(factor, "float32"))
        x = x / ops.reshape(counts, [-1 if a == axis else 1 for a in range(4)])
        return x, ops.cast(length, "float32") / ops.cast(factor, "float32")

    @staticmethod
    def _resample(x, axis: int, size: int, extent):
        """Pillow's BILINEAR resize of `axis` from `extent` pixels to `size`: a triangle filter
        stretched over `extent / size` pixels when shrinking (antialiasing), edges renormalised."""
        ops = keras.ops
        length = ops.shape(x)[axis]
        scale = extent / size
        support = ops.maximum(scale, 1.0)
        taps = ops.cast(ops.ceil(2.0 * support), "int32") + 1
        centres = (ops.cast(ops.arange(size), "float32") + 0.5) * scale
        first = ops.maximum(ops.cast(ops.floor(centres - support + 0.5), "int32"), 0)
        index = first[:, None] + ops.arange(taps)[None, :]
        weights = ops.maximum(0.0, 1.0 - ops.abs((ops.cast(index, "float32") + 0.5 - centres[:, None]) / support))
        weights = ops.where(index < length, weights, 0.0)
        weights = weights / ops.sum(weights, axis=1, keepdims=True)
        gathered = ops.take(x, ops.minimum(index, length - 1), axis=axis)  # (.., size, taps, ..)
        weights = ops.reshape(weights, [size if a == axis else -1 if a == axis + 1 else 1 for a in range(5)])
        return ops.sum(gathered * weights, axis=axis + 1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.height, self.width, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width,
                "reducing_gap": self.reducing_gap}


@keras.saving.register_keras_serializable(package="tlcli")
class Preprocess(layers.Layer):
    """A backbone's input preprocessing as a plain, safely loadable layer (no Lambda)."""

    MODES = ("tf", "torch", "caffe", "none")

    def __init__(self, mode: str = "tf", **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"unknown preprocessing mode {mode!r}")
        self.mode = mode

    def call(self, x):
        x = keras.ops.cast(x, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = keras.ops.convert_to_tensor(_TORCH_MEAN, self.compute_dtype)
            std = keras.ops.convert_to_tensor(_TORCH_STD, self.compute_dtype)
            return (x / 255.0 - mean) / std
        if self.mode == "caffe":
            mean = keras.ops.convert_to_tensor(_CAFFE_BGR_MEAN, self.compute_dtype)
            return keras.ops.flip(x, axis=-1) - mean
        return x

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def build_classifier(backbone: str, n_classes: int, image_size: int, weights: str = "imagenet",
                     dropout: float = 0.2, multi_label: bool = False) -> keras.Model:
    """The deployable model for `backbone` with a fresh softmax head of `n_classes`; with
    `multi_label`, a sigmoid head: one independent probability per class."""
    spec = get_spec(backbone)
    inputs = keras.Input((None, None, 3), name="image")
    x = Resize(image_size, image_size, name="resize")(inputs)
    x = Preprocess(spec.preprocess, name="preprocess")(x)
    features = build_backbone(backbone, weights, image_size)
    features.name = BACKBONE_NAME
    if pretrained(weights):
        # Holds for calls that do not say (model(x)); an explicit training=True (fit) overrides
        # it. What keeps ImageNet's BatchNorm statistics through fine-tuning is unfreeze_top
        # freezing BatchNorm: a frozen BatchNormalization always runs in inference mode.
        x = features(x, training=False)
    else:
        x = features(x)  # from scratch there are no statistics to protect: BatchNorm learns

    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    # float32 output keeps softmax (and sigmoid) stable under mixed precision.
    outputs = layers.Dense(n_classes, activation="sigmoid" if multi_label else "softmax", dtype="float32",
                           name="predictions")(x)
    return keras.Model(inputs, outputs, name=f"tlcli_{backbone}")


def float32_copy(classifier: keras.Model) -> keras.Model:
    """The same model with every layer computing in float32, holding the same weights.

    Under mixed precision (`mixed_float16`) the classifier is built with float16 layer policies,
    and saved as it is it would compute in float16 wherever it is loaded or converted. Weights
    are float32 either way, so the copy is exact. To save repeatedly, keep one copy and refresh
    it with `copy.set_weights(classifier.get_weights())`.
    """
    copy = keras.Model.from_config(_float32_config(classifier.get_config()))
    copy.set_weights(classifier.get_weights())
    return copy


def _float32_config(node):
    """A model config with every dtype policy float32 (nested models and tensor specs included)."""
    if isinstance(node, list):
        return [_float32_config(item) for item in node]
    if not isinstance(node, dict):
        return node
    if node.get("class_name") == "DTypePolicy":
        return {**node, "config": {**node["config"], "name": "float32"}}
    node = {key: _float32_config(value) for key, value in node.items()}
    if node.get("class_name") == "__keras_tensor__" and node["config"].get("dtype") in ("float16", "bfloat16"):
        node["config"] = {**node["config"], "dtype": "float32"}
    return node


def get_backbone(classifier: keras.Model) -> keras.Model:
    return classifier.get_layer(BACKBONE_NAME)


def feature_model(classifier: keras.Model) -> keras.Model:
    """Image -> pooled backbone features (the input of the head)."""
    return keras.Model(classifier.input, classifier.get_layer("pool").output, name="features")


def head_model(classifier: keras.Model) -> keras.Model:
    """Pooled features -> probabilities, sharing the classifier's dropout and dense layers."""
    inputs = keras.Input(classifier.get_layer("pool").output.shape[1:], name="features")
    x = classifier.get_layer("dropout")(inputs)
    return keras.Model(inputs, classifier.get_layer("predictions")(x), name="head")


def freeze_backbone(classifier: keras.Model) -> None:
    """Phase 1: only the head trains."""
    get_backbone(classifier).trainable = False


def pretrained(weights: str) -> bool:
    """True unless the backbone starts from random weights (--weights none)."""
    return str(weights).lower() != "none"


def unfreeze_top(classifier: keras.Model, unfreeze: int | float, freeze_batchnorm: bool = True) -> int:
    """Phase 2: train the top `unfreeze` layers (an int count, or a float fraction) of the backbone.

    With `freeze_batchnorm` (pretrained backbones) BatchNorm layers stay frozen: their statistics
    come from ImageNet and a small dataset's batches would only make them worse.
    Returns the number of layers unfrozen.
    """
    backbone = get_backbone(classifier)
    body = [l for l in backbone.layers if not isinstance(l, layers.InputLayer)]
    count = round(len(body) * unfreeze) if isinstance(unfreeze, float) else int(unfreeze)
    count = max(0, min(count, len(body)))
    backbone.trainable = True
    for i, layer in enumerate(body):
        is_batchnorm = isinstance(layer, layers.BatchNormalization)
        layer.trainable = i >= len(body) - count and not (freeze_batchnorm and is_batchnorm)
    return count


def count_params(model: keras.Model) -> tuple[int, int]:
    """(trainable, non-trainable) parameter counts."""
    trainable = sum(int(keras.ops.size(w)) for w in model.trainable_weights)
    frozen = sum(int(keras.ops.size(w)) for w in model.non_trainable_weights)
    return trainable, frozen


def load_classifier(path) -> keras.Model:
    """Load a tlcli .keras model in Keras safe mode (no code from the file is run)."""
    from tlcli.errors import TlcliError

    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as error:  # Keras raises ValueError, TypeError, OSError, zipfile errors…
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        # Keras says "File not found" for a file that is there, and explains safe mode at length.
        text = _not_a_keras_file(path) or _safe_mode_refusal(str(error)) or text
        raise TlcliError(f"cannot load '{path}' as a Keras model: {text[:200]}") from None


def split_backbone(classifier: keras.Model, unfreeze: int | float) -> tuple[keras.Model, keras.Model | None]:
    """Split the classifier where phase 2's trainable part begins, for caching what lies below.

    Returns (stem, top): `stem` maps images to the activations at the cut, `top` maps those to the
    pooled features (None when the stem already ends at the pooled features). The cut is the
    deepest layer at or below the first unfrozen one whose output alone feeds everything above
    it (residual and dense connections rule out cuts inside a block). The top shares its layers
    with the classifier, so training it trains the classifier.
    """
    backbone = get_backbone(classifier)
    body = [l for l in backbone.layers if not isinstance(l, layers.InputLayer)]
    count = round(len(body) * unfreeze) if isinstance(unfreeze, float) else int(unfreeze)
    first_trainable = len(body) - max(0, min(count, len(body)))
    preprocessed = classifier.get_layer("preprocess").output
    # Bare keras.ops arithmetic (ConvNeXt, MobileNetV3) is in the graph but not in .layers.
    graph = [op for op in backbone.operations if not isinstance(op, layers.InputLayer)]
    limit = graph.index(body[first_trainable]) if first_trainable < len(body) else len(graph)
    for i in reversed([i for i in _valid_cuts(graph) if i < limit]):
        cut = graph[i].output
        top_backbone = keras.Model(cut, backbone.output, name="backbone_top")
        bottom = keras.Model(backbone.input, cut, name="backbone_bottom")
        stem = keras.Model(classifier.input, bottom(preprocessed, training=False), name="stem")
        inputs = keras.Input(cut.shape[1:], name="activations")
        pooled = classifier.get_layer("pool")(top_backbone(inputs, training=False))
        return stem, keras.Model(inputs, pooled, name="top")
    return feature_model(classifier), None  # no cut inside the backbone: cache pooled features


def _valid_cuts(graph: list) -> list[int]:
    """Indices i (of operations in topological order) where op i's output alone feeds all above it.

    One pass: a cut at i is valid when no operation after i reads a tensor made before i.
    """
    position = {id(op): i for i, op in enumerate(graph)}
    earliest_input = []  # per operation: the position of the earliest one it reads from
    for layer in graph:
        sources = [position.get(id(t._keras_history.operation), -1)
                   for node in layer._inbound_nodes for t in node.input_tensors]
        earliest_input.append(min(sources, default=-1))
        if len(layer._inbound_nodes) != 1:  # a shared layer cannot be cut cleanly
            earliest_input[-1] = -1
    valid, lowest_above = [], len(graph)
    for i in range(len(graph) - 1, -1, -1):
        if lowest_above >= i and len(graph[i]._inbound_nodes) == 1:
            valid.append(i)
        lowest_above = min(lowest_above, earliest_input[i])
    return sorted(valid)


def top_classifier(top: keras.Model, classifier: keras.Model) -> keras.Model:
    """Cached activations -> probabilities: `top` followed by the classifier's own head."""
    x = classifier.get_layer("dropout")(top.output)
    return keras.Model(top.input, classifier.get_layer("predictions")(x), name="top_classifier")


def check_classifier(model: keras.Model, labels: list[str], path, image_size: int | None = None) -> None:
    """A one-line TlcliError unless `model` can be run as tlcli runs its own: one batch of RGB
    images in (any size, or `image_size`), one probability per label of labels.txt out.

    Called right after loading, so a model from another tool, or labels.txt from another run,
    is refused with a reason instead of failing inside TensorFlow with a traceback.
    """
    from tlcli.errors import TlcliError

    inputs, outputs = getattr(model, "inputs", None), getattr(model, "outputs", None)
    if inputs is not None:
        if len(inputs) != 1:
            raise TlcliError(f"'{path}' takes {len(inputs)} inputs; an image classifier takes one batch of images.")
        shape = tuple(inputs[0].shape)
        if len(shape) != 4 or shape[-1] not in (3, None):
            raise TlcliError(f"'{path}' takes input of shape {_shape_text(shape)}, not a batch of RGB images "
                             "(a model from another tool?).")
        fixed = shape[1:3]
        if image_size and None not in fixed and tuple(fixed) != (image_size, image_size):
            raise TlcliError(f"'{path}' takes {fixed[1]}x{fixed[0]} images, but its run says {image_size}x{image_size}.")
    if outputs is not None:
        if len(outputs) != 1 or len(outputs[0].shape) != 2:
            shapes = ", ".join(_shape_text(tuple(o.shape)) for o in outputs)
            raise TlcliError(f"'{path}' outputs {shapes}, not one probability per class (a model from another tool?).")
        n_outputs = outputs[0].shape[-1]
        if n_outputs is not None and int(n_outputs) != len(labels):
            raise TlcliError(f"'{path}' outputs {int(n_outputs)} classes but its labels.txt lists {len(labels)}: "
                             "the labels do not belong to this model.")


def _shape_text(shape: tuple) -> str:
    return "(" + ", ".join("batch" if i == 0 and d is None else "any" if d is None else str(d)
                           for i, d in enumerate(shape)) + ")"


def _not_a_keras_file(path) -> str | None:
    """Why `path` cannot be a .keras model at all (it is not a Keras zip archive), else None."""
    import zipfile

    try:
        with open(path, "rb") as f:
            head = f.read(8)
        if head == b"\x89HDF\r\n\x1a\n":
            return "it is an HDF5 (.h5) file, from Keras 2 or another tool; tlcli reads .keras files"
        if not zipfile.is_zipfile(path):
            return "not a .keras file (not a zip archive)"
        with zipfile.ZipFile(path) as archive:
            if "config.json" not in archive.namelist():
                return "a zip archive without the config.json of a .keras model"
    except (OSError, zipfile.BadZipFile) as error:
        return f"cannot read it: {error.strerror or error}" if isinstance(error, OSError) else "a damaged zip archive"
    return None


def _safe_mode_refusal(text: str) -> str | None:
    """Keras's long explanations of what safe mode refused, as one short reason."""
    import re

    if "arbitrary code execution" in text or "safe_mode" in text:
        return ("it holds Python code (e.g. a Lambda layer), which tlcli never runs: models are loaded in "
                "Keras safe mode")
    unknown = re.search(r"Could not locate (?:class|function) '([^']+)'", text)
    if unknown:
        return f"it uses '{unknown.group(1)}', which is not part of tlcli or Keras (a model from another tool?)"
    return None
