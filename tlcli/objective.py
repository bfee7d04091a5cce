"""What training optimises and watches, for each kind of head.

    single-label: softmax -> categorical cross-entropy (label smoothing) -> accuracy
    multi-label:  sigmoid -> binary cross-entropy, each label's positives weighted
                  -> binary accuracy ("accuracy") and mAP ("map")

The best model and --patience go by the validation score `tlcli.callbacks.val_score` reads:
accuracy for single-label, mAP for multi-label (a threshold-free ranking figure: accuracy at
0.5 says little when most labels are absent from most images).
Imported only by the commands that train: importing it imports Keras.
"""

from __future__ import annotations

import keras
import numpy as np


class WeightedBinaryCrossentropy(keras.losses.Loss):
    """Binary cross-entropy of probabilities, each label's positive term multiplied by its
    `pos_weight` (PyTorch's BCEWithLogitsLoss pos_weight): a rare label's few positives count
    as much as its many negatives. Keras's class_weight cannot do this: it weighs whole
    images by their one class."""

    def __init__(self, pos_weight=None, name: str = "weighted_binary_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.pos_weight = None if pos_weight is None else [float(w) for w in pos_weight]

    def call(self, y_true, y_pred):
        ops = keras.ops
        y_true = ops.cast(y_true, y_pred.dtype)
        epsilon = keras.config.epsilon()
        p = ops.clip(y_pred, epsilon, 1.0 - epsilon)  # as Keras's own binary cross-entropy clips
        weight = 1.0 if self.pos_weight is None else ops.convert_to_tensor(self.pos_weight, y_pred.dtype)
        return -ops.mean(weight * y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p), axis=-1)

    def get_config(self):
        return {**super().get_config(), "pos_weight": self.pos_weight}


def loss(config, pos_weight: np.ndarray | None = None) -> keras.losses.Loss:
    """The loss of `config`'s head. Multi-label does not smooth its targets: smoothing moves a
    negative's target to ls/2, and a label's positive weight then multiplies that pull too, so a
    rare label's negatives would be trained towards a high probability (0.34 for weight 10 and
    the default 0.1). Its thresholds are tuned on validation anyway, which is what smoothing's
    tempered probabilities would have been for."""
    if config.multi_label:
        return WeightedBinaryCrossentropy(pos_weight)
    return keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)


def metrics(config, n_classes: int) -> list:
    """The metrics each epoch's logs and history.csv carry: accuracy, and mAP for multi-label."""
    if config.multi_label:
        return [keras.metrics.BinaryAccuracy(name="accuracy"), mean_average_precision(n_classes)]
    return ["accuracy"]


def mean_average_precision(n_classes: int) -> keras.metrics.Metric:
    """mAP as Keras computes it during training: the area under each label's precision-recall
    curve (200 thresholds, interpolated), averaged over the labels."""
    return keras.metrics.AUC(curve="PR", multi_label=True, num_labels=n_classes, name="map")


def scores(config, truth: np.ndarray, probs: np.ndarray, pos_weight: np.ndarray | None = None) -> dict:
    """{"loss", and for multi-label "map"}: what training's metrics say of (`truth`, `probs`), to
    check a saved model against the figures recorded for its epoch."""
    found = {"loss": float(loss(config, pos_weight)(truth, probs))}
    if config.multi_label:
        metric = mean_average_precision(truth.shape[1])
        metric.update_state(truth, probs)
        found["map"] = float(metric.result())
    return found
