"""Likely label errors: images whose given class the evidence contradicts, surest first.

The evidence is either a cross-validated softmax regression on the images' features (a frozen
backbone's, or cheap pixel statistics) or a trained model's probabilities. Numpy only.
"""

from __future__ import annotations

import numpy as np

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
    if trained_on and any(files[i]["split"] == "train" for i in rows):
        notes.append("the model learnt its training images' labels, wrong ones included: "
                     "its verdicts on them are lenient; those on val/ and test/ images are not.")
    return [_suspect(int(rows[r]), labels[given[r]], labels[c], pg, pl) for r, c, pg, pl in found]


def _suspect(index: int, given: str, likely: str, p_given: float, p_likely: float) -> dict:
    return {"index": index, "given": given, "likely": likely, "p_given": round(p_given, 4),
            "p_likely": round(p_likely, 4)}
