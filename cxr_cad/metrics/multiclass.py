"""Multi-class helpers: one-vs-rest AUCs and the K x K confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cxr_cad.metrics.delong import AucCI, delong_auc_ci
from cxr_cad.metrics.proportions import proportion


def _class_indices(y_true, classes: Sequence[str]) -> np.ndarray:
    """Class labels -> positions in ``classes``, matched by value (as text). Raises ValueError.

    Integer labels are labels, never positions: with ``classes = [1, 2]`` the label 2 is the
    second class (position 1), and with ``classes = ["NORMAL", "VIRAL"]`` the label 0 is
    unknown. (An earlier version read integers as positions, which mislabelled such data.)
    """
    classes = [str(c) for c in classes]
    if len(set(classes)) != len(classes):
        raise ValueError(f"class names must be distinct; got {classes}")
    y = np.asarray(y_true)
    lookup = {c: i for i, c in enumerate(classes)}
    text = [str(v.item() if isinstance(v, np.generic) else v) for v in y.ravel()]
    unknown = sorted(set(text) - set(lookup))
    if unknown:
        raise ValueError(f"labels {unknown[:5]} are not among the classes {classes}")
    return np.array([lookup[v] for v in text], dtype=np.int64)


def one_vs_rest_auc(y_true_multi, prob_matrix, classes: Sequence[str], *, alpha: float = 0.05) -> dict[str, AucCI]:
    """AUC (with DeLong CI) of each class against all others.

    Args:
        y_true_multi: class labels (matched to ``classes`` by value, never by position); shape (n,).
        prob_matrix: (n, K) probabilities, column k for ``classes[k]``.
        classes: the K class names in column order.

    Returns:
        ``{class name: AucCI}``; a class absent from (or the only class in) ``y_true_multi``
        gets NaN with :class:`UndefinedMetricWarning`. Raises ``ValueError`` on shape mismatch.
    """
    p = np.asarray(prob_matrix, dtype=np.float64)
    idx = _class_indices(y_true_multi, classes)
    if p.ndim != 2 or p.shape != (idx.size, len(classes)):
        raise ValueError(f"prob_matrix must have shape ({idx.size}, {len(classes)}); got {p.shape}")
    return {str(c): delong_auc_ci((idx == k).astype(np.int8), p[:, k], alpha=alpha) for k, c in enumerate(classes)}


def confusion_matrix_k(y_true, y_pred, classes: Sequence[str]) -> np.ndarray:
    """K x K counts: rows = true class, columns = predicted class, in ``classes`` order.

    Same layout as ``sklearn.metrics.confusion_matrix(..., labels=classes)``.
    Raises ``ValueError`` for unknown labels or mismatched lengths.
    """
    t = _class_indices(y_true, classes)
    q = _class_indices(y_pred, classes)
    if t.shape != q.shape:
        raise ValueError(f"y_true has {t.size} values but y_pred has {q.size}")
    k = len(classes)
    return np.bincount(t * k + q, minlength=k * k).reshape(k, k)


def per_class_accuracy(y_true, y_pred, classes: Sequence[str], *, alpha: float = 0.05) -> dict[str, dict]:
    """Recall of each class ("individual class accuracy") with a Wilson interval.

    Returns ``{class name: {"value", "low", "high", "k", "n"}}``; NaN + warning for a
    class with no cases.
    """
    cm = confusion_matrix_k(y_true, y_pred, classes)
    return {
        str(c): proportion(int(cm[i, i]), int(cm[i].sum()), alpha=alpha, name=f"accuracy of {c}")
        for i, c in enumerate(classes)
    }
