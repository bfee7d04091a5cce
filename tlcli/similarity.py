"""Which images are the same: content hashes, perceptual hashes and embedding similarity, and
the duplicate groups of a dataset they make (leakage across splits, one picture in two classes).

Numpy and Pillow only (TensorFlow only inside `backbone_embedder`): `tlcli check` and the cheap
check `tlcli train` runs both use it. Pairs are found by comparing every image with every other, a block of rows at a time, so
memory stays at one block whatever the number of images (the time grows as n squared: about a
second for 10,000 images).
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tlcli import fs

# Near-duplicates, tuned on ../shared/data/flowers-dev (350 photos, 61k distinct pairs) with 40
# photos each planted as: resized to 1/2 and JPEG q70; resized to 0.3 and q40; 5% and 10% crops;
# +15% brightness; greyscale; mirrored.
#   pHash bits differing: resized+re-encoded copies 0-4 (all 80), brightness 0-4, greyscale 0-2,
#     5% crops 2-20, mirrored 26-36; distinct photos 12 and up (one pair at 12, next 16; the
#     only pair below, at 2, is a real duplicate: the same dandelion graded blue).
#   mobilenet_v2 cosine: brightness >= 0.95 (38/40), 5% crops 0.81-0.97, mirrored 0.90-0.98,
#     but resized copies only 0.48-0.88 (upscaled thumbnails lose the fine texture it sees);
#     distinct photos at most 0.885.
# So pHash <= 6 finds every resized or re-encoded copy; with embeddings, cosine >= 0.95, or
# pHash <= 14 with cosine >= 0.85 together, add most mild crops (36/40) and some mirror images
# (11/40). No rule flags any distinct pair of flowers-dev.
PHASH_BITS = 6
COSINE_NEAR = 0.95
LOOSE_PHASH_BITS, LOOSE_COSINE = 14, 0.85
_BLOCK_VALUES = 1 << 24  # values compared at once: a block of rows against all n (128 MB of uint64)
_CHUNK = 1 << 20  # bytes read at a time while hashing a local file


def file_size(path) -> int | None:
    """The size in bytes of a local file, None when it cannot be read (or is a URL)."""
    if fs.is_url(path):
        return None
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def content_hash(path) -> str | None:
    """SHA-256 of the file's bytes (hex), None when it cannot be read."""
    digest = hashlib.sha256()
    try:
        if fs.is_url(path):
            digest.update(fs.read_bytes(path))
        else:
            with open(path, "rb") as f:
                while block := f.read(_CHUNK):
                    digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def identical_files(paths: list, skip: set[int] = frozenset()) -> list[list[int]]:
    """Indices of files with identical bytes, in groups of two or more (each group sorted).

    Only files whose size another file shares are hashed: equal bytes need equal sizes, and
    stat costs nothing next to reading, so a folder without duplicates is hardly read at all.
    Empty files and the indices in `skip` (files known to be unreadable) are left out.
    """
    sizes = {}
    for i, path in enumerate(paths):
        if i not in skip:
            sizes.setdefault(file_size(path), []).append(i)
    # Unknown sizes (URLs) all share the key None, so they are all hashed.
    candidates = [i for size, members in sizes.items() if size != 0 and len(members) > 1 for i in members]
    with ThreadPoolExecutor(min(16, (os.cpu_count() or 2) * 2)) as pool:
        digests = list(pool.map(lambda i: content_hash(paths[i]), candidates))
    by_digest: dict[str, list[int]] = {}
    for i, digest in zip(candidates, digests):
        if digest is not None:
            by_digest.setdefault(digest, []).append(i)
    return sorted(sorted(g) for g in by_digest.values() if len(g) > 1)


# ---------------------------------------------------------------- perceptual hash

_HASH_SIDE = 32  # the image is reduced to 32x32 grey levels, of which the 8x8 lowest frequencies count


def _dct_matrix(n: int) -> np.ndarray:
    k, x = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return np.cos(np.pi * (2 * x + 1) * k / (2 * n))


_DCT = _dct_matrix(_HASH_SIDE)


def phash(images: np.ndarray) -> np.ndarray:
    """64-bit DCT perceptual hashes (uint64, one per image) of uint8 RGB images (n, h, w, 3).

    Grey levels at 32x32, 2-D DCT, the 8x8 lowest frequencies compared with their median: the
    overall layout of light and dark, which resizing, re-encoding and mild colour changes keep.
    """
    from PIL import Image

    images = np.asarray(images)
    out = np.zeros(len(images), np.uint64)
    weights = np.uint64(1) << np.arange(64, dtype=np.uint64)
    for k, image in enumerate(images):
        grey = Image.fromarray(image).convert("L").resize((_HASH_SIDE, _HASH_SIDE), Image.BOX)
        low = (_DCT @ np.asarray(grey, np.float64) @ _DCT.T)[:8, :8].ravel()
        out[k] = np.sum(weights[low > np.median(low)], dtype=np.uint64)
    return out


def hamming_pairs(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    """(i, j, bits that differ) for every i < j whose hashes differ in at most `max_distance` bits."""
    hashes = np.asarray(hashes, np.uint64)
    pairs = []
    rows_at_once = _rows_at_once(len(hashes))
    for start in range(0, len(hashes), rows_at_once):
        block = hashes[start:start + rows_at_once]
        distance = np.bitwise_count(block[:, None] ^ hashes[None, :])
        rows, cols = np.nonzero(distance <= max_distance)
        for r, c in zip(rows.tolist(), cols.tolist()):
            if start + r < c:
                pairs.append((start + r, c, int(distance[r, c])))
    return pairs


def _rows_at_once(n: int) -> int:
    return max(16, _BLOCK_VALUES // max(n, 1))


def cosine_pairs(embeddings: np.ndarray, min_similarity: float) -> list[tuple[int, int, float]]:
    """(i, j, cosine similarity) for every i < j whose embeddings are at least `min_similarity` alike."""
    x = np.asarray(embeddings, np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    pairs = []
    rows_at_once = _rows_at_once(len(x))
    for start in range(0, len(x), rows_at_once):
        similarity = x[start:start + rows_at_once] @ x.T
        rows, cols = np.nonzero(similarity >= min_similarity)
        for r, c in zip(rows.tolist(), cols.tolist()):
            if start + r < c:
                pairs.append((start + r, c, round(float(similarity[r, c]), 4)))
    return pairs


def connected_groups(pairs) -> list[list[int]]:
    """The groups (each sorted, two or more members) that `pairs` (i, j, …) link, transitively."""
    parent: dict[int, int] = {}

    def root(i: int) -> int:
        while parent.setdefault(i, i) != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, *_ in pairs:
        parent[root(i)] = root(j)
    members: dict[int, list[int]] = {}
    for i in parent:
        members.setdefault(root(i), []).append(i)
    return sorted(sorted(g) for g in members.values() if len(g) > 1)


# ---------------------------------------------------------------- features


def backbone_embedder(name: str, size: int):
    """uint8 images (n, size, size, 3) -> backbone `name`'s pooled ImageNet features, as one traced
    function. Imports TensorFlow; a missing weight file is a one-line TlcliError."""
    import tensorflow as tf

    from tlcli.model import build_classifier, feature_model
    from tlcli.progress import quiet_native_output

    with quiet_native_output():  # Keras prints "Downloading data from …" on stdout, --json's channel
        model = feature_model(build_classifier(name, 2, size, "imagenet"))
    spec = tf.TensorSpec((None, size, size, 3), tf.uint8)
    run = tf.function(lambda x: model(tf.cast(x, tf.float32), training=False), input_signature=[spec])
    return lambda images: run(images).numpy()


def grey_flags(images: np.ndarray, tolerance: float = 3.0) -> np.ndarray:
    """Whether each uint8 RGB image is grey (its channels agree to within `tolerance` levels on
    average): a greyscale file, or a colour file holding a grey picture."""
    x = np.asarray(images, np.int16)
    spread = np.abs(x[..., 0] - x[..., 1]) + np.abs(x[..., 1] - x[..., 2])
    return spread.reshape(len(x), -1).mean(axis=1) <= tolerance


def pixel_features(images: np.ndarray) -> np.ndarray:
    """A cheap descriptor of each uint8 RGB image (n, h, w, 3), no model needed: an 8-bin
    histogram of each channel, the channels' means and spreads, a 2x2 thumbnail, and the mean
    difference of neighbouring grey levels along each axis at two scales (texture). 46 values.

    Enough to tell classes apart by colour or texture, not real photos: those need a backbone.
    (A joint 4x4x4 colour histogram did worse: its rarely filled bins, once standardised, are
    noise the fit latches onto.)
    """
    x = np.asarray(images, np.float32) / 255.0
    n, h, w, _ = x.shape
    bins = np.minimum((x * 8).astype(np.int64), 7) + 8 * np.arange(3)  # channel c: bins 8c..8c+7
    histogram = np.stack([np.bincount(b.ravel(), minlength=24) for b in bins]).astype(np.float32) / (h * w)
    spread = np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2))], axis=1)
    even = x[:, :h - h % 2, :w - w % 2]
    thumb = even.reshape(n, 2, h // 2, 2, w // 2, 3).mean(axis=(2, 4)).reshape(n, -1)
    grey = x.mean(axis=3)
    texture = []
    for step in (1, 4):
        texture.append(np.abs(grey[:, step:, :] - grey[:, :-step, :]).mean(axis=(1, 2)))
        texture.append(np.abs(grey[:, :, step:] - grey[:, :, :-step]).mean(axis=(1, 2)))
    return np.concatenate([histogram, spread, thumb, np.stack(texture, axis=1)], axis=1)


# ---------------------------------------------------------------- duplicate groups of a dataset


def exact_group(files: list[dict], members: list[int]) -> dict:
    """A group of identical files (indices into `files`, dicts with "split" and "class"), with its kinds."""
    return {"kinds": _kinds(files, members), "members": members}


def _kinds(files: list[dict], members: list[int]) -> list[str]:
    """leakage (in several splits), cross-class (filed under several classes), else within-class."""
    kinds = []
    if len({files[i]["split"] for i in members}) > 1:
        kinds.append("leakage")
    if len({files[i]["class"] for i in members}) > 1:
        kinds.append("cross-class")
    return kinds or ["within-class"]


def near_groups(files: list[dict], ok: np.ndarray, hashes: np.ndarray, embeddings: np.ndarray | None,
                exact: list[dict]) -> list[dict]:
    """Groups of images that are the same picture in different files, by the rules under
    PHASH_BITS: `hashes` (pHash) and `embeddings` (a backbone's, or None) have a row per file;
    only rows where `ok` count. Pairs of files in one `exact` group are left to that group.
    """
    ok = np.flatnonzero(ok)
    hashes = hashes[ok]
    same_file = {i: k for k, g in enumerate(exact) for i in g["members"]}
    pairs: dict[tuple[int, int], list] = {}
    for a, b, bits in hamming_pairs(hashes, PHASH_BITS):
        pairs[(a, b)] = [bits, None]
    if embeddings is not None:
        x = embeddings[ok]
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        for key in pairs:
            pairs[key][1] = round(float(x[key[0]] @ x[key[1]]), 4)
        for a, b, cosine in cosine_pairs(x, LOOSE_COSINE):
            bits = int(np.bitwise_count(hashes[a] ^ hashes[b]))
            if cosine >= COSINE_NEAR or bits <= LOOSE_PHASH_BITS:
                pairs[(a, b)] = [bits, cosine]
    kept = [(int(ok[a]), int(ok[b]), bits, cosine) for (a, b), (bits, cosine) in sorted(pairs.items())
            if same_file.get(int(ok[a]), -1) != same_file.get(int(ok[b]), -2)]
    groups = []
    for members in connected_groups(kept):
        inside = set(members)
        groups.append({"kinds": _kinds(files, members), "members": members,
                       "pairs": [list(p) for p in kept if p[0] in inside]})
    return groups
