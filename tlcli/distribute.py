"""Training on several GPUs or hosts through TensorFlow's own tf.distribute strategies.

    auto         MirroredStrategy when more than one GPU is visible, else the default strategy
    one          OneDeviceStrategy on the first GPU (or the CPU)
    mirrored     MirroredStrategy over every local GPU
    multiworker  MultiWorkerMirroredStrategy over the hosts in the TF_CONFIG environment variable

--batch-size is the global batch, split over replicas; learning rates apply to that global batch,
so a run behaves the same whatever the number of replicas. Only the chief writes the run folder.
"""

from __future__ import annotations

import contextlib
import json
import os

from tlcli.errors import TlcliError

STRATEGIES = ("auto", "one", "mirrored", "multiworker")


def make_strategy(name: str):
    """The tf.distribute strategy for `name`. Create it before any other TensorFlow work."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "one":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if not _tf_config().get("cluster"):
            raise TlcliError("--strategy multiworker needs the TF_CONFIG environment variable "
                             "(cluster and task of this host); see the README.")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise TlcliError(f"--strategy must be one of {', '.join(STRATEGIES)}, not '{name}'.")


def _tf_config() -> dict:
    try:
        return json.loads(os.environ.get("TF_CONFIG") or "{}")
    except json.JSONDecodeError:
        raise TlcliError("TF_CONFIG is not valid JSON.") from None


def is_chief(strategy=None) -> bool:
    """True on the host that writes results: the 'chief' task, or worker 0 when there is none.

    Worker roles exist only under `--strategy multiworker`: a TF_CONFIG left in the environment
    must not make a single-host run act as a worker that throws its own run away.
    """
    if strategy is not None and not is_multiworker(strategy):
        return True
    config = _tf_config()
    task = config.get("task") or {}
    if not task:
        return True
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0 and "chief" not in config.get("cluster", {})


def ignored_tf_config(strategy) -> str | None:
    """A warning when TF_CONFIG is set but the strategy does not use it."""
    if os.environ.get("TF_CONFIG") and not is_multiworker(strategy):
        return "TF_CONFIG is set but ignored: it takes effect only with --strategy multiworker."
    return None


def worker_shard(strategy) -> tuple[int, int]:
    """(this worker's index, number of workers): the shard of the training files it reads."""
    if not is_multiworker(strategy):
        return 0, 1
    config = _tf_config()
    cluster, task = config.get("cluster", {}), config.get("task", {})
    chiefs, workers = len(cluster.get("chief", [])), len(cluster.get("worker", []))
    index = 0 if task.get("type") == "chief" else chiefs + int(task.get("index", 0))
    return index, chiefs + workers


def is_multiworker(strategy) -> bool:
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def prepare_for_fit(model, strategy) -> None:
    """Let `model.fit` work under MultiWorkerMirroredStrategy with Keras 3 (keras#20585).

    A model built under a strategy makes Keras reduce a whole (x, y) batch eagerly before fit,
    which the multi-worker strategy rejects. Without a pinned strategy Keras skips that step and
    takes the strategy of the surrounding `strategy.scope()`, where tlcli always calls fit.
    """
    if is_multiworker(strategy):
        model._distribute_strategy = None


@contextlib.contextmanager
def fit_scope(strategy):
    """`strategy.scope()`, plus, for multiple workers, a fix for Keras's reduction of scalar logs.

    Keras 3 reduces every per-replica log across workers with axis=0, which fails for the scalar
    loss and metrics (keras#20585); scalars are reduced without an axis here. Restored on exit.
    """
    with strategy.scope():
        if not is_multiworker(strategy):
            yield
            return
        from keras.src import tree
        from keras.src.backend.tensorflow import trainer

        original = trainer.reduce_per_replica

        def reduce_per_replica(values, strategy, reduction):
            if reduction not in ("auto", "mean"):
                return original(values, strategy, reduction)

            def reduce(value):
                local = strategy.experimental_local_results(value)[0] if trainer._is_per_replica_instance(value) else value
                return strategy.reduce("MEAN", value, axis=None if local.shape.rank == 0 else 0)

            return tree.map_structure(reduce, values)

        trainer.reduce_per_replica = reduce_per_replica
        try:
            yield
        finally:
            trainer.reduce_per_replica = original
