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


def _files(folder, images):
    """The images as lossless PNG files, which decode back to exactly these pixels."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        paths.append(str(folder / f"{i}.png"))
        Image.fromarray(image).save(paths[-1])
    return paths


def test_compute_caches_clean_and_augmented_views(parts, tmp_path):
    classifier, stem, top = parts
    train, val = _images(5), _images(3, seed=1)
    acts, failed = cache.compute(stem, build_augmenter(AugmentConfig(), 32), _files(tmp_path / "t", train),
                                 _files(tmp_path / "v", val), 32, views=3, batch_size=2, budget_bytes=1e9,
                                 spill_dir=tmp_path)
    assert acts.train.shape[:2] == (3, 5) and acts.val.shape[0] == 3 and not acts.spilled and failed == {}
    assert np.allclose(acts.train[0], stem(train.astype("float32")).numpy(), atol=1e-5)  # view 0 is clean
    assert np.allclose(acts.val, stem(val.astype("float32")).numpy(), atol=1e-5)
    assert not np.allclose(acts.train[1], acts.train[0])  # the others are augmented
    features, val_features = cache.pooled_features(top, acts, batch_size=4)
    assert features.shape == (15, 64) and val_features.shape == (3, 64)


def test_compute_decodes_each_file_once_for_all_its_views(parts, tmp_path, monkeypatch):
    from tlcli import images

    _, stem, _ = parts
    decoded = []
    real = images.load_image
    monkeypatch.setattr(images, "load_image", lambda path, size: decoded.append(path) or real(path, size))
    paths = _files(tmp_path / "t", _images(5))
    cache.compute(stem, build_augmenter(AugmentConfig(), 32), paths, paths[:2], 32, views=4, batch_size=2,
                  budget_bytes=1e9, spill_dir=tmp_path)
    assert sorted(decoded) == sorted(paths + paths[:2])


@pytest.mark.parametrize("budget", [1e9, 0])  # in memory, and spilled to a file
def test_unreadable_files_are_reported_and_their_rows_dropped(parts, tmp_path, budget):
    _, stem, _ = parts
    train = _images(5)
    paths = _files(tmp_path / "t", train)
    with open(paths[1], "wb") as f:
        f.write(b"not a png")
    with open(paths[3], "wb") as f:
        f.write(b"")
    val_paths = _files(tmp_path / "v", _images(2, seed=1))
    acts, failed = cache.compute(stem, build_augmenter(AugmentConfig(), 32), paths, val_paths, 32, views=2,
                                 batch_size=2, budget_bytes=budget, spill_dir=tmp_path / "spill")
    assert sorted(failed) == [paths[1], paths[3]] and all(failed.values())
    assert acts.spilled == (budget == 0)
    kept = cache.keep(acts, [0, 2, 4], np.array([0, 2, 1]), [1], np.array([1]))
    assert kept.train.shape[:2] == (2, 3) and kept.val.shape[0] == 1
    assert np.allclose(kept.train[0], stem(train[[0, 2, 4]].astype("float32")).numpy(), atol=1e-5)
    assert kept.train_labels.tolist() == [0, 2, 1] and kept.val_labels.tolist() == [1]


def test_compute_spills_to_disk_past_the_budget(parts, tmp_path):
    _, stem, _ = parts
    train = _images(4)
    acts, _ = cache.compute(stem, build_augmenter(AugmentConfig(), 32), _files(tmp_path / "t", train),
                            _files(tmp_path / "v", _images(2)), 32, views=2, batch_size=4, budget_bytes=0,
                            spill_dir=tmp_path / "spill")
    assert acts.spilled and (tmp_path / "spill" / "train.bin").exists()
    assert np.allclose(acts.train[0][:], stem(train.astype("float32")).numpy(), atol=1e-5)
    # Read and written with pread/pwrite, never memory-mapped: its pages are not this process's.
    with open("/proc/self/maps") as maps:
        assert "train.bin" not in maps.read()
    val = cache.validation_data(acts, 2, batch_size=1)
    assert len(val) == 2 and np.allclose(val[1][0], stem(_images(2)[1:].astype("float32")).numpy(), atol=1e-5)


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


def test_multi_hot_labels_pass_through_the_cache_as_they_are():
    """A multi-label run's rows reach phase 2 unchanged: kept rows, random views, validation."""
    labels = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], np.float32)
    train = np.arange(2 * 4, dtype=np.float32).reshape(2, 4, 1)  # view v of image i holds v*4+i
    acts = cache.ActivationCache(train.copy(), np.zeros(4, np.int32), np.arange(2, dtype=np.float32).reshape(2, 1),
                                 np.zeros(2, np.int32), 0.0, False)
    kept = cache.keep(acts, [0, 2, 3], labels[[0, 2, 3]], [1], labels[[2]])  # val: a row of two labels
    assert kept.train_labels.dtype == np.float32 and kept.train_labels.tolist() == labels[[0, 2, 3]].tolist()
    batches = cache.RandomViews(kept, 3, batch_size=2, seed=0)
    for i in range(len(batches)):
        x, y = batches[i]  # x % 4: the image's place before keep
        assert y.tolist() == labels[x.reshape(-1).astype(int) % 4].tolist()
    x, y = cache.validation_data(kept, 3, batch_size=8)
    assert y.tolist() == labels[[2]].tolist()
