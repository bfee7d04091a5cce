"""Grad-CAM maths: where a tlcli classifier finds the evidence for a class, as a heatmap.

Grad-CAM (Selvaraju et al., 2017) weighs each channel of the backbone's last convolutional
feature map by the mean gradient of the class's logit (the score before softmax, which does not
saturate at high confidence), sums them and keeps the positive part: the regions that raise the
class's score. A multi-label model's logits are those before its sigmoids, one per label. The feature map is the backbone's output (every registry backbone is built
without its top, so its output is its last conv feature map), or the map just before it when
the backbone ends in a parameter-free pooling layer (VGG's block5_pool), for twice the detail.
No per-backbone configuration is needed: `feature_layer` finds it in any backbone.

The heatmap is computed on exactly what the model sees (`tlcli.images.load_image`, which squashes
the image to a square); `cell_geometry` says where each of its cells looks (one-sided "same"
padding moves a cell by up to half a cell, 16 px at 224, which a plain stretch gets wrong), so
`tlcli.overlay` can stretch it back over the original image in the right place.
Nothing here imports TensorFlow at module level.
"""

from __future__ import annotations

import numpy as np

from tlcli.errors import TlcliError

_POOLING = ("MaxPooling2D", "AveragePooling2D")


def feature_layer(backbone):
    """(the operation whose output Grad-CAM explains, [pooling layers between it and the output]).

    The backbone's output is its last convolutional feature map; when the backbone ends in
    max/average pooling (VGG), the map before the pooling is used: same features, finer grid.
    """
    tensor = backbone.outputs[0]
    if len(tensor.shape) != 4:
        raise TlcliError(f"backbone '{backbone.name}' outputs shape {tuple(tensor.shape)}, not a feature map: "
                         "Grad-CAM needs a convolutional backbone.")
    trailing = []
    while True:
        operation, node_index, _ = tensor._keras_history
        if type(operation).__name__ not in _POOLING:
            return operation, tensor, trailing[::-1]
        inputs = operation._inbound_nodes[node_index].input_tensors
        if len(inputs) != 1 or len(operation._inbound_nodes) != 1:
            return operation, tensor, trailing[::-1]
        trailing.append(operation)
        tensor = inputs[0]


_WINDOWS = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "MaxPooling2D", "AveragePooling2D")


def cell_geometry(backbone, feature, size: int):
    """Where each cell of `feature` (a tensor of `backbone`) is centred in a size x size input.

    Returns ((n, stride, offset) for rows, (n, stride, offset) for columns): cell j of the n
    along that axis is centred stride * j + offset input pixels from the edge (pixel k spans
    k..k+1); None when some layer changes the grid in a way not modelled here. Convolutions and
    pooling (kernel, stride, dilation; "same" pads as TensorFlow does, the odd pixel after),
    zero-padding and cropping move the centres; layers that keep the grid (activations,
    normalisation, additions, concatenations) keep them, averaged where branches differ.
    Nested models (ConvNeXt's stem) are followed inside. Weights play no part.
    """
    start = ((size, 1.0, 0.5), (size, 1.0, 0.5))
    return _graph_geometry(backbone, start, feature)


def _graph_geometry(model, start, target=None):
    geometry = {id(model.inputs[0]): start}
    for operation in model.operations:
        for node in operation._inbound_nodes:
            inputs = [geometry[id(t)] for t in node.input_tensors if id(t) in geometry]
            outputs = [t for t in node.output_tensors if len(t.shape) == 4]
            if not inputs or not outputs or type(operation).__name__.startswith("Global"):
                continue  # off the image grid (squeeze-excitation vectors, even with keepdims)
            result = _step(operation, inputs)
            if result is None:
                return None
            for tensor in outputs:
                if any(d is not None and d != g[0] for d, g in zip(tensor.shape[1:3], result)):
                    return None  # the layer changed the grid otherwise than modelled: give up
                geometry[id(tensor)] = result
    return geometry.get(id(target if target is not None else model.outputs[0]))


def _step(operation, inputs: list):
    """The grid after one operation, from the grids of its inputs on the image grid; None: unknown."""
    name = type(operation).__name__
    if len(inputs) > 1 and len({(g[0][0], g[1][0]) for g in inputs}) > 1:
        # A (1, 1) input is broadcast (squeeze-excitation scales): it does not move the grid.
        inputs = [g for g in inputs if g[0][0] > 1 or g[1][0] > 1] or inputs
    grid = inputs[0]
    if name in _WINDOWS:
        result = tuple(_through_window(operation, axis, grid[axis]) for axis in (0, 1))
        return None if None in result else result
    if name == "ZeroPadding2D":
        return tuple((n + sum(pad), s, o - s * pad[0]) for (n, s, o), pad in zip(grid, operation.padding))
    if name == "Cropping2D":
        return tuple((n - sum(cut), s, o + s * cut[0]) for (n, s, o), cut in zip(grid, operation.cropping))
    if name == "Sequential":
        for layer in operation.layers:
            if grid is not None and not type(layer).__name__.startswith("Global"):
                grid = _step(layer, [grid])
        return grid
    if hasattr(operation, "operations") and hasattr(operation, "inputs"):  # a nested functional model
        return _graph_geometry(operation, grid)
    if any(g[0][0] != grid[0][0] or g[1][0] != grid[1][0] for g in inputs):
        return None
    return tuple((grid[axis][0], float(np.mean([g[axis][1] for g in inputs])),
                  float(np.mean([g[axis][2] for g in inputs]))) for axis in (0, 1))


def _through_window(layer, axis: int, grid):
    """(n, stride, offset) after a convolution or pooling window along `axis` (0 rows, 1 columns)."""
    n, stride, offset = grid
    kernel = _pair(getattr(layer, "kernel_size", None) or getattr(layer, "pool_size", None))[axis]
    step = _pair(layer.strides)[axis]
    dilation = _pair(getattr(layer, "dilation_rate", 1))[axis]
    padding = str(layer.padding).lower()
    extent = dilation * (kernel - 1) + 1
    if padding == "valid":
        out, before = (n - extent) // step + 1, 0
    elif padding == "same":
        out = -(-n // step)
        before = max((out - 1) * step + extent - n, 0) // 2
    else:
        return None
    return out, stride * step, offset + stride * ((extent - 1) / 2 - before)


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


class Explainer:
    """Grad-CAM for a tlcli classifier: uint8 images -> (heatmaps in [0, 1], probabilities).

    Built from the classifier's own layers (nothing is copied): image -> resize/preprocess ->
    backbone up to the feature map; then, under a gradient tape, feature map -> [pooling] ->
    pool -> dense logits. Only the head is differentiated, so a heatmap costs one forward pass.
    """

    def __init__(self, classifier, labels: list[str]):
        import keras

        from tlcli.model import get_backbone

        try:
            backbone = get_backbone(classifier)
            self._front = keras.Model(classifier.inputs, classifier.get_layer("preprocess").output)
            self.image_size = int(classifier.get_layer("resize").height)
            self._pool = classifier.get_layer("pool")
            self._dropout = classifier.get_layer("dropout")
            self._dense = classifier.get_layer("predictions")
        except ValueError:
            raise TlcliError(f"'{classifier.name}' is not a tlcli classifier (no backbone, pool and predictions "
                             "layers): cannot explain it.") from None
        operation, tensor, self._trailing = feature_layer(backbone)
        self._backbone, self._feature = backbone, tensor
        self.layer_name = operation.name
        self._bottom = backbone if tensor is backbone.outputs[0] else keras.Model(backbone.inputs, tensor)
        self.labels = list(labels)
        # A sigmoid head (multi-label): each label's probability is its own, not a share of one.
        self.multi_label = getattr(self._dense, "activation", None) is keras.activations.sigmoid
        units = int(self._dense.units) if hasattr(self._dense, "units") else None
        if units is not None and units != len(self.labels):
            raise TlcliError(f"the model outputs {units} classes but its labels.txt lists {len(self.labels)}.")
        self._span = None

    @property
    def span(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """The image's edges in heatmap cells: ((top, bottom), (left, right)), cell j spanning j..j+1.

        A plain stretch assumes ((0, h), (0, w)), but stride-2 layers padded on one side only
        (TensorFlow's "same", Keras's correct_pad) move every cell's receptive field a little
        further at each such layer: half a cell down and right for MobileNetV2 and EfficientNet
        (15.5 px at 224), up and left for ResNet; and valid convolutions (Xception, Inception at
        299) leave cells 32 px apart where a stretch puts them 29.9. Worked out from the layers'
        geometry (`cell_geometry`); the plain stretch when it cannot be.
        """
        if self._span is None:
            geometry = cell_geometry(self._backbone, self._feature, self.image_size)
            grid = [int(v) if v else 1 for v in self._feature.shape[1:3]]
            if geometry is None:
                self._span = ((0.0, float(grid[0])), (0.0, float(grid[1])))
            else:  # pixel u lies at cell coordinate (u - offset) / stride + 0.5
                self._span = tuple((float(np.clip(-offset / stride + 0.5, -2, 2)),
                                    float(np.clip((self.image_size - offset) / stride + 0.5, n - 2, n + 2)))
                                   for n, stride, offset in geometry)
        return self._span

    def explain(self, images: np.ndarray, classes=None) -> tuple[np.ndarray, np.ndarray]:
        """Heatmaps (n, h, w) float32 in [0, 1] at the feature map's resolution, and the
        probabilities (n, classes), for uint8 images (n, size, size, 3).

        `classes`: None (each image's predicted class), one class index, or one per image.
        A heatmap with no positive evidence anywhere is all zeros.
        """
        import tensorflow as tf

        images = np.asarray(images)
        if len(images) == 0:
            return np.zeros((0, 1, 1), np.float32), np.zeros((0, len(self.labels)), np.float32)
        x = self._front(tf.convert_to_tensor(images, tf.float32), training=False)
        fmap = tf.cast(self._bottom(x, training=False), tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(fmap)
            logits = self._logits(fmap)
            probs = tf.sigmoid(logits) if self.multi_label else tf.nn.softmax(logits, axis=-1)
            if classes is None:
                target = tf.argmax(logits, axis=-1, output_type=tf.int32)
            else:
                target = tf.broadcast_to(tf.convert_to_tensor(classes, tf.int32), (len(images),))
            score = tf.reduce_sum(tf.gather(logits, target, axis=1, batch_dims=1))
        grads = tape.gradient(score, fmap)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)  # one weight per channel
        cam = tf.nn.relu(tf.reduce_sum(weights * fmap, axis=-1)).numpy()
        peak = cam.reshape(len(cam), -1).max(axis=1)
        cam = np.divide(cam, peak[:, None, None], out=np.zeros_like(cam), where=peak[:, None, None] > 0)
        return np.nan_to_num(cam).astype(np.float32), probs.numpy()

    def _logits(self, fmap):
        import keras
        import tensorflow as tf

        y = fmap
        for layer in self._trailing:
            y = layer(y)
        h = self._dropout(self._pool(y), training=False)
        dense = self._dense
        if getattr(dense, "activation", None) in (keras.activations.softmax, keras.activations.sigmoid):
            z = tf.matmul(tf.cast(h, dense.kernel.dtype), dense.kernel)
            return tf.cast(z + dense.bias if dense.use_bias else z, tf.float32)
        return tf.math.log(tf.cast(dense(h), tf.float32) + 1e-12)  # a head without softmax: log-probabilities

