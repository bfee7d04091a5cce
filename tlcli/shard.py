"""Each worker's own part of the training data under `--strategy multiworker`.

Every worker decodes and caches only its shard of the training files (every N-th file), so N
hosts read the dataset once between them instead of N times. Keras would otherwise shard each
batch across workers that all hold the same data; here each worker feeds its own data, so the
pipelines below switch TensorFlow's auto-sharding off, give each worker 1/N of the global batch,
and repeat, so that every worker runs the same number of steps per epoch (a worker that stops
early would leave the others waiting in their collectives). Validation is not sharded.
"""

from __future__ import annotations

import math

import numpy as np

from tlcli.data import Split, make_dataset


def shard_of(split: Split, index: int, count: int) -> Split:
    """Every `count`-th file of `split`, starting at `index`."""
    rows = list(range(index, len(split), count))
    return Split([split.paths[i] for i in rows], split.labels[rows] if rows else split.labels[:0],
                 None if split.images is None else split.images[rows])


def steps_per_epoch(n_total: int, count: int, worker_batch: int) -> int:
    """The same figure on every worker: one pass over the smallest shard of `n_total` items."""
    return max(1, math.ceil((n_total // count) / worker_batch))


def own_data(dataset):
    """`dataset` fed as it is to this worker's replicas: no auto-sharding."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options)


def features_dataset(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None, batch_size: int, seed: int):
    """Phase 1: (features, one-hot labels[, sample weights]) shuffled, batched, repeated."""
    import tensorflow as tf

    tensors = (x, y) if weights is None else (x, y, weights)
    ds = tf.data.Dataset.from_tensor_slices(tensors).shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return own_data(ds.batch(batch_size).repeat())


def views_dataset(views, n_classes: int):
    """Phase 2 on cached activations: the batches of a `cache.RandomViews`, a fresh draw per pass."""
    import tensorflow as tf

    first = views[0]

    def batches():
        while True:
            for i in range(len(views)):
                yield views[i]
            views.on_epoch_end()

    signature = tuple(tf.TensorSpec((None, *part.shape[1:]), part.dtype) for part in first)
    return own_data(tf.data.Dataset.from_generator(batches, output_signature=signature))


def files_dataset(split: Split, n_classes: int, batch_size: int, seed: int, size: int):
    """Phase 2 end to end: this worker's files, decoded batch by batch, repeated."""
    return own_data(make_dataset(split, n_classes, batch_size, shuffle=True, seed=seed, size=size).repeat())
