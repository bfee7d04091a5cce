"""The training-only augmentation stage, as Keras layers so it runs on the GPU when there is one."""

from __future__ import annotations

import math

from tlcli.config import AugmentConfig


def build_augmenter(config: AugmentConfig, image_size: int, seed: int = 0):
    """A Keras model that randomly rotates, shifts, shears, zooms and flips uint8/float images.

    It acts only when called with training=True; it is never part of a saved model.
    """
    import keras
    from keras import layers

    config.check()  # a clear message rather than a Keras ValueError for an out-of-range value

    stages = []
    if config.enabled:
        if config.flip:
            stages.append(layers.RandomFlip("horizontal", seed=seed))
        if config.rotation:
            stages.append(layers.RandomRotation(config.rotation / 360.0, seed=seed + 1))
        if config.shift:
            stages.append(layers.RandomTranslation(config.shift, config.shift, seed=seed + 2))
        if config.shear:
            factor = math.tan(math.radians(config.shear))
            stages.append(layers.RandomShear(factor, factor, seed=seed + 3))
        if config.zoom:
            stages.append(layers.RandomZoom(config.zoom, config.zoom, seed=seed + 4))
    inputs = keras.Input((image_size, image_size, 3))
    x = layers.Identity()(inputs) if not stages else inputs
    for stage in stages:
        x = stage(x)
    return keras.Model(inputs, x, name="augment")


def preview(images, config: AugmentConfig, seed: int = 0, variants: int = 5):
    """(n, variants + 1, h, w, 3) uint8: each image, then `variants` augmented versions of it."""
    import numpy as np

    augmenter = build_augmenter(config, images.shape[1], seed)
    rows = [images.astype("float32")]
    for _ in range(variants):
        rows.append(np.asarray(augmenter(images.astype("float32"), training=True)))
    return np.clip(np.stack(rows, axis=1), 0, 255).astype("uint8")


def write_preview(data_dir, output, config: AugmentConfig, samples: int = 6, variants: int = 5,
                  size: int = 160, seed: int = 0):
    """Pick `samples` images of DATA_DIR (spread over classes) and write their augmentation grid."""
    import random
    from pathlib import Path

    import numpy as np

    from tlcli.data import detect_layout, discover
    from tlcli.images import ImageError, load_image
    from tlcli.errors import TlcliError
    from tlcli.plots import plot_image_grid

    layout = detect_layout(data_dir)  # a local folder or a URL (gs://...): not Path, which mangles URLs
    classes, _ = discover(layout.get("train", layout.get("all")))
    rng = random.Random(seed)
    pool = [(name, path) for name, files in classes.items() for path in rng.sample(files, min(len(files), samples))]
    rng.shuffle(pool)
    pool.sort(key=lambda item: item[0])  # classes together, still a random pick within each
    picked, names = [], []
    by_class = {}
    for name, path in pool:
        by_class.setdefault(name, []).append(path)
    while len(picked) < samples and any(by_class.values()):
        for name in list(by_class):
            if by_class[name] and len(picked) < samples:
                try:
                    picked.append(load_image(by_class[name].pop(0), size))
                    names.append(name)
                except ImageError:
                    continue
    if not picked:
        raise TlcliError(f"no readable images in class folders of '{data_dir}'.")
    grid = preview(np.stack(picked), config, seed=seed, variants=variants)
    output = Path(output)
    if output.parent and not output.parent.exists():
        output.parent.mkdir(parents=True)
    plot_image_grid(grid, output, row_titles=names, col_titles=["original"] + [f"augmented {i + 1}" for i in range(variants)])
    return output
