"""The activation cache: the same model as running the backbone, views, spilling, batches."""

import numpy as np
import pytest

from tlcli import cache
from tlcli.augment import build_augmenter
from tlcli.config import AugmentConfig
from tlcli.model import (build_classifier, feature_model, freeze_backbone, split_backbone, top_classifier,
                         unfreeze_top)


@pytest.fixture(scope="module")
def parts():
    classifier = build_classifier("tiny", 3, 32, "none")
    freeze_backbone(classifier)
    stem, top = split_backbone(classifier, 0.5)
    return classifier, stem, top


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_split_is_exactly_the_classifier(parts):
    classifier, stem, top = parts
    x = _images(4).astype("float32")
    assert top is not None
    assert np.allclose(top(stem(x, training=False)).numpy(), feature_model(classifier)(x).numpy(), atol=1e-6)
    assert np.allclose(top_classifier(top, classifier)(stem(x)).numpy(), classifier(x).numpy(), atol=1e-6)


def test_split_keeps_every_unfrozen_layer_in_the_top(parts):
    classifier, stem, top = parts
    count = unfreeze_top(classifier, 0.5)
    trainable_names = {w.path for w in classifier.trainable_weights if "backbone" in w.path or "conv" in w.path}
    top_names = {w.path for w in top_classifier(top, classifier).trainable_weights}
    assert count > 0 and trainable_names <= top_names
    freeze_backbone(classifier)


def test_compute_caches_clean_and_augmented_views(parts, tmp_path):
    classifier, stem, top = parts
    train, val = _images(5), _images(3, seed=1)
    acts = cache.compute(stem, build_augmenter(AugmentConfig(), 32), train, np.arange(5) % 3, val, np.arange(3),
                         views=3, batch_size=2, budget_bytes=1e9, spill_dir=tmp_path)
    assert acts.train.shape[:2] == (3, 5) and acts.val.shape[0] == 3 and not acts.spilled
    assert np.allclose(acts.train[0], stem(train.astype("float32")).numpy(), atol=1e-5)  # view 0 is clean
    assert not np.allclose(acts.train[1], acts.train[0])  # the others are augmented
    features, val_features = cache.pooled_features(top, acts, batch_size=4)
    assert features.shape == (15, 64) and val_features.shape == (3, 64)


def test_compute_spills_to_disk_past_the_budget(parts, tmp_path):
    _, stem, _ = parts
    acts = cache.compute(stem, build_augmenter(AugmentConfig(), 32), _images(4), np.zeros(4, int), _images(2),
                         np.zeros(2, int), views=2, batch_size=4, budget_bytes=0, spill_dir=tmp_path / "spill")
    assert acts.spilled and isinstance(acts.train, np.memmap)
    assert (tmp_path / "spill" / "train.npy").exists()
    assert np.allclose(acts.train[0], stem(_images(4).astype("float32")).numpy(), atol=1e-5)


def test_random_views_sees_each_image_once_per_epoch_with_weights():
    train = np.arange(2 * 5, dtype=np.float32).reshape(2, 5, 1)  # view v of image i holds v*5+i
    acts = cache.ActivationCache(train, np.array([0, 0, 0, 1, 1]), np.zeros((1, 1)), np.zeros(1, int), 0.0, False)
    batches = cache.RandomViews(acts, 2, batch_size=2, seed=0, class_weights={0: 0.5, 1: 2.0})
    assert len(batches) == 3
    seen = []
    for i in range(len(batches)):
        x, y, w = batches[i]
        images = (x.reshape(-1) % 5).astype(int)
        seen += images.tolist()
        assert (y.argmax(1) == acts.train_labels[images]).all()
        assert np.allclose(w, np.where(y.argmax(1) == 0, 0.5, 2.0))
    assert sorted(seen) == [0, 1, 2, 3, 4]
    first_views = [batches[i][0].reshape(-1) // 5 for i in range(len(batches))]
    batches.on_epoch_end()
    later_views = [batches[i][0].reshape(-1) // 5 for i in range(len(batches))]
    assert any((a.shape != b.shape) or (a != b).any() for a, b in zip(first_views, later_views))
