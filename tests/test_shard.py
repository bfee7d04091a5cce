"""Each worker's own part of the data: disjoint shards, equal step counts, unsharded pipelines."""

import numpy as np

from tlcli import cache
from tlcli.data import Split
from tlcli.shard import features_dataset, shard_of, steps_per_epoch, views_dataset


def test_shards_are_disjoint_cover_the_split_and_keep_labels():
    split = Split([f"f{i}.png" for i in range(7)], np.arange(7, dtype=np.int32) % 3)
    shards = [shard_of(split, i, 3) for i in range(3)]
    assert [s.paths for s in shards] == [["f0.png", "f3.png", "f6.png"], ["f1.png", "f4.png"], ["f2.png", "f5.png"]]
    assert [s.labels.tolist() for s in shards] == [[0, 0, 0], [1, 1], [2, 2]]
    assert shard_of(Split(["a"], np.zeros(1, np.int32)), 1, 2).paths == []


def test_every_worker_runs_the_same_number_of_steps():
    # 10 images over 3 workers: shards of 4, 3, 3; 2 images a step -> 2 steps each, the 4-shard wraps
    assert steps_per_epoch(10, 3, 2) == 2
    assert steps_per_epoch(1, 2, 8) == 1


def test_worker_pipelines_are_not_auto_sharded_and_repeat():
    import tensorflow as tf

    x, y = np.arange(6, dtype=np.float32).reshape(6, 1), np.eye(2, dtype=np.float32)[[0, 1] * 3]
    ds = features_dataset(x, y, None, batch_size=4, seed=0)
    assert ds.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.OFF
    batches = [b[0].numpy().ravel() for b in ds.take(3)]  # one pass is 4 + 2; the third repeats
    assert [len(b) for b in batches] == [4, 2, 4]
    assert sorted(np.concatenate(batches[:2]).tolist()) == [0, 1, 2, 3, 4, 5]


def test_views_dataset_draws_fresh_views_each_pass():
    train = np.arange(2 * 4, dtype=np.float32).reshape(2, 4, 1)  # view v of image i holds v*4+i
    acts = cache.ActivationCache(train, np.array([0, 1, 0, 1]), np.zeros((1, 1)), np.zeros(1, int), 0.0, False)
    views = cache.RandomViews(acts, 2, batch_size=4, seed=0)
    passes = [b[0].numpy().ravel() for b in views_dataset(views, 2).take(4)]
    assert all(sorted((p % 4).tolist()) == [0, 1, 2, 3] for p in passes)  # every image once a pass
    assert len({tuple(p // 4) for p in passes}) > 1  # the views drawn change between passes
