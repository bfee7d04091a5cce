"""Likely label errors: images whose given class the evidence contradicts, surest first.

The evidence is either a cross-validated softmax regression on the images' features (a frozen
backbone's, or cheap pixel statistics) or a trained model's probabilities. A multi-label
dataset is judged label by label, by a multi-label model's probabilities against each label's
threshold; only by a model (see NO_MODEL_MULTILABEL). Numpy only.
"""

from __future__ import annotations

import numpy as np

from tlcli.multilabel import multi_hot

# A 5-fold cross-validated softmax regression on the features. Tuned on flowers-dev's
# mobilenet_v2 features (350 photos, 5 classes, 84% cross-validated accuracy) with 5 labels
# moved at random, 10 draws: the rule in `find_suspects` found 43 of the 50 moved images and
# flagged 20 images a draw in all (the others: look-alikes between classes, a few real oddities);
# confident learning's thresholds alone found 40 for 17.5 flagged, and flat rules did worse
# (6 draws: "given < 0.1 and other > 0.6" found 25 of 30 for 15 flagged, "< 0.2, > 0.5" 28 for
# 28). On the colour classes of tests/test_check.py (pixel features, 20 draws) it finds 100 of
# 100 moved images, nothing else, and nothing in clean folders. L2 0.3 on standardised features
# was the best of 0.1-10; whitened PCA (components rescaled to unit variance) to 64 or 256
# dimensions found far fewer, unlike the top components at their own scale (see fit_softmax).
FOLDS, L2 = 5, 0.3
NEGLIGIBLE = 0.1  # a given class scoring under a tenth of its usual confidence is contradicted
COMPONENTS = 256  # directions of the features the regression is fitted in (see fit_softmax)


def cross_validated_probabilities(features: np.ndarray, labels: np.ndarray, n_classes: int,
                                  folds: int = FOLDS, seed: int = 0) -> np.ndarray:
    """Each image's class probabilities from a softmax regression fitted without it: stratified
    `folds`, so every prediction is out of fold, as cleanlab asks of its inputs."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(labels), np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rng.shuffle(members)
        fold[members] = (np.arange(len(members)) + int(rng.integers(folds))) % folds
    probs = np.zeros((len(labels), n_classes), np.float32)
    for f in range(folds):
        held = fold == f
        if held.any() and (~held).any():
            probs[held] = fit_softmax(features[~held], labels[~held], n_classes)(features[held])
    return probs


def fit_softmax(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float = L2, steps: int = 200):
    """A multinomial logistic regression on standardised features, fitted by Nesterov-accelerated
    gradient descent at step 1/L (L bounds the loss's curvature); returns features -> probabilities.

    With an L2 penalty the weights stay in the span of the training rows, so the fit runs in the
    coordinates of that span (a thin SVD): the same solution, in at most n dimensions instead of
    d, and L is the top singular value squared. Only the COMPONENTS strongest directions are
    kept: the penalty all but silences the weak ones anyway (on flowers-dev, 256 of 280 gave the
    same suspects in 10 of 10 draws), and a fold of 5000 images then costs 5 times less.
    """
    x = np.asarray(x, np.float32)
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    _, singular, basis = np.linalg.svd((x - mean) / scale, full_matrices=False)
    basis = basis[:COMPONENTS].T  # (d, r), orthonormal columns
    z = ((x - mean) / scale) @ basis
    n = len(z)
    onehot = np.eye(n_classes, dtype=np.float32)[y]
    lipschitz = 0.5 * (float(singular[0]) ** 2 / n + 1.0) + l2
    w, b = np.zeros((z.shape[1], n_classes), np.float32), np.zeros(n_classes, np.float32)
    w_look, b_look, t = w.copy(), b.copy(), 1.0
    for _ in range(steps):
        gradient = (_softmax(z @ w_look + b_look) - onehot) / n
        w_next = w_look - (z.T @ gradient + l2 * w_look) / lipschitz
        b_next = b_look - gradient.sum(axis=0) / lipschitz
        t_next = (1 + np.sqrt(1 + 4 * t * t)) / 2
        w_look = w_next + (t - 1) / t_next * (w_next - w)
        b_look = b_next + (t - 1) / t_next * (b_next - b)
        w, b, t = w_next, b_next, t_next
    weights = basis @ w
    return lambda rows: _softmax(((np.asarray(rows, np.float32) - mean) / scale) @ weights + b)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def find_suspects(probs: np.ndarray, given: np.ndarray, judged: np.ndarray | None = None) -> list[tuple]:
    """(row, likely class, p of the given class, p of the likely one) for the likely label errors,
    surest first (largest p_likely - p_given).

    As cleanlab's confident learning, each class's threshold is the mean probability the model
    gives it on the images filed under it: a row is flagged when its given class scores below
    its threshold and below 0.5, while another class scores at least its own threshold and 0.5;
    or when its given class scores under NEGLIGIBLE times its threshold while another has 0.5.
    """
    probs, given = np.asarray(probs, np.float64), np.asarray(given)
    n, k = probs.shape
    judged = np.ones(n, bool) if judged is None else np.asarray(judged, bool)
    rows = np.arange(n)
    threshold = np.array([probs[(given == c) & judged, c].mean() if ((given == c) & judged).any() else 1.0
                          for c in range(k)])
    p_given = probs[rows, given]
    others = probs.copy()
    others[rows, given] = -1.0
    likely = others.argmax(axis=1)
    p_likely = others[rows, likely]
    confident = (p_given < np.minimum(threshold[given], 0.5)) & (p_likely >= np.maximum(threshold[likely], 0.5))
    contradicted = (p_given < NEGLIGIBLE * threshold[given]) & (p_likely >= 0.5)
    flagged = judged & (confident | contradicted)
    order = sorted(np.flatnonzero(flagged), key=lambda i: p_given[i] - p_likely[i])
    return [(int(i), int(likely[i]), float(p_given[i]), float(p_likely[i])) for i in order]


def from_features(files: list[dict], class_names: list[str], features: np.ndarray, ok: np.ndarray, seed: int,
                  notes: list[str]) -> list[dict]:
    """Likely label errors among `files` (dicts with "class") from a cross-validated fit on their
    features (rows where `ok`); a note for what could not be judged."""
    index = {name: k for k, name in enumerate(class_names)}
    rows = np.flatnonzero(ok)
    labels = np.array([index[files[i]["class"]] for i in rows], np.int64)
    counts = np.bincount(labels, minlength=len(class_names))
    few = [class_names[c] for c in range(len(class_names)) if 0 < counts[c] < FOLDS]
    if few:
        notes.append(f"label check skips class(es) with fewer than {FOLDS} readable images: {', '.join(few)}.")
    if (counts >= FOLDS).sum() < 2:
        notes.append(f"label errors not checked: it needs 2 classes with at least {FOLDS} readable images.")
        return []
    probs = cross_validated_probabilities(features[rows], labels, len(class_names), FOLDS, seed)
    judged = counts[labels] >= FOLDS
    return [_suspect(int(rows[r]), class_names[labels[r]], class_names[c], pg, pl)
            for r, c, pg, pl in find_suspects(probs, labels, judged)]


def from_model(files: list[dict], probs: np.ndarray, labels: list[str], ok: np.ndarray, notes: list[str],
               trained_on: bool = False) -> list[dict]:
    """Likely label errors among `files` by a model's probabilities (a row per file, its classes
    `labels`); images of classes it lacks are not judged. `trained_on`: the files are the ones
    the model was trained on, so its training split's labels were learnt, wrong ones included."""
    index = {name: k for k, name in enumerate(labels)}
    unknown = sorted({f["class"] for f in files} - set(index))
    if unknown:
        notes.append(f"the model has no class {', '.join(unknown)}: those images are not judged.")
    rows = np.array([i for i, f in enumerate(files) if ok[i] and f["class"] in index
                     and np.isfinite(probs[i]).all()], np.int64)
    if not len(rows):
        return []
    given = np.array([index[files[i]["class"]] for i in rows], np.int64)
    found = find_suspects(probs[rows], given)
    _lenient(files, rows, trained_on, notes)
    return [_suspect(int(rows[r]), labels[given[r]], labels[c], pg, pl) for r, c, pg, pl in found]


def _lenient(files: list[dict], rows, trained_on: bool, notes: list[str]) -> None:
    if trained_on and any(files[i]["split"] == "train" for i in rows):
        notes.append("the model learnt its training images' labels, wrong ones included: "
                     "its verdicts on them are lenient; those on val/ and test/ images are not.")


def _suspect(index: int, given: str, likely: str, p_given: float, p_likely: float) -> dict:
    return {"index": index, "given": given, "likely": likely, "p_given": round(p_given, 4),
            "p_likely": round(p_likely, 4)}


# ---------------------------------------------------------------- multi-label

# Label by label, a label in doubt must be both past what is usual for the label (confident
# learning's mean, below) and far past its threshold: MARGIN of the way from it to 0 (a given
# label) or to 1 (a missing one). Tuned with labels flipped at random (1 in 20 images, 200
# draws) on two weak runs, whose probabilities bunch up near the thresholds: the shapes run of
# tests/conftest.py (val macro F1 1.0, but labels' mean probabilities 0.65 with, 0.25 without)
# and a mobilenet_v2 run on mosaics of 1-3 flowers-dev photos (172 images, val mAP 0.80). On
# the mosaics' val images the mean rule alone flagged 13 of 35 clean images; with MARGIN 0.6,
# 1 (and 1 of 137 training images), finding 14% of the flipped labels (shapes: none flagged,
# 11-15% found). A run sure of its labels (probabilities near 0 and 1) is hardly held back by it.
MARGIN = 0.6
# Why a multi-label file is not judged without a model. The same rule on the out-of-fold
# probabilities of a logistic regression per label (mobilenet_v2 features of the mosaics:
# AP 0.81-0.90 a label) flagged 31 of the 172 clean images, and 8 flipped labels a draw gave
# 37 images flagged wrongly for 4 found; rules on the probability alone (a given label under
# 0.05-0.3 of its threshold) flagged 3-7 good images for each mislabelled one.
NO_MODEL_MULTILABEL = ("multi-label labels are checked only with --model RUN (a multi-label run): image features, "
                       "tried label by label, flagged more good images than mislabelled ones.")


def find_label_suspects(probs: np.ndarray, given: np.ndarray, thresholds) -> list[tuple[int, list[int]]]:
    """(row, [labels in doubt]) for the images whose labels the model contradicts, surest first.

    A given label is in doubt when its probability is under (1 - MARGIN) times its threshold and
    no higher than the label's mean on the images without it (as unlikely as a typical image
    lacking it); a label not given, when its probability is over its threshold plus MARGIN of
    the way to 1 and at least the label's mean on the images with it. The surest doubt is the
    one farthest past its threshold, as a share of the room on its side: (t - p) / t, or
    (p - t) / (1 - t). A label no image has, or every image has, is never in doubt.
    """
    probs, given = np.asarray(probs, np.float64), np.asarray(given) > 0.5
    thresholds = np.asarray(thresholds, np.float64)
    k = probs.shape[1]
    with_it = np.array([probs[given[:, c], c].mean() if given[:, c].any() else np.inf for c in range(k)])
    without = np.array([probs[~given[:, c], c].mean() if (~given[:, c]).any() else -np.inf for c in range(k)])
    past = np.where(given, (thresholds - probs) / np.maximum(thresholds, 1e-6),
                    (probs - thresholds) / np.maximum(1 - thresholds, 1e-6))
    flagged = (past >= MARGIN) & np.where(given, probs <= without, probs >= with_it)
    found = []
    for i in sorted(np.flatnonzero(flagged.any(axis=1)), key=lambda i: -past[i][flagged[i]].max()):
        found.append((int(i), sorted(np.flatnonzero(flagged[i]).tolist(), key=lambda c: -past[i, c])))
    return found


def from_multilabel_model(files: list[dict], probs: np.ndarray, labels: list[str], thresholds, ok: np.ndarray,
                          notes: list[str], trained_on: bool = False) -> list[dict]:
    """Likely label errors among `files` (dicts with "labels") by a multi-label model's
    probabilities (a row per file; its labels `labels`) at its `thresholds` (None: 0.5 each).
    Labels the model lacks are not judged, nor its labels that no image here has."""
    thresholds = [0.5] * len(labels) if thresholds is None else list(thresholds)
    unknown = sorted({label for f in files for label in f["labels"]} - set(labels))
    if unknown:
        notes.append(f"the model has no label {', '.join(unknown)}: not judged.")
    rows = np.array([i for i, f in enumerate(files) if ok[i] and np.isfinite(probs[i]).all()], np.int64)
    if not len(rows):
        return []
    given = multi_hot([files[i]["labels"] for i in rows], labels)
    absent = [labels[c] for c in np.flatnonzero(~given.any(axis=0))]
    if absent:
        notes.append(f"no image here has the model's label(s) {', '.join(absent)}: not judged.")
    _lenient(files, rows, trained_on, notes)
    return [_label_suspect(int(rows[r]), files[rows[r]]["labels"], labels, probs[rows[r]], thresholds, doubts)
            for r, doubts in find_label_suspects(probs[rows], given, thresholds)]


def _label_suspect(index: int, given: list[str], labels: list[str], probs, thresholds, doubts: list[int]) -> dict:
    """A multi-label suspect: its labels in doubt, each given or not, with its probability and
    threshold; `likely`: the labels the model gives the image (at or above their thresholds)."""
    return {"index": index, "given": list(given),
            "likely": [label for label, p, t in zip(labels, probs, thresholds) if p >= t],
            "disputed": [{"label": labels[c], "given": labels[c] in given, "probability": round(float(probs[c]), 4),
                          "threshold": round(float(thresholds[c]), 4)} for c in doubts]}
