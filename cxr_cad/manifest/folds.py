"""Patient-grouped, label-stratified cross-validation folds and train/validation splits.

No patient ever appears on both sides of a split: images are grouped by ``patient_id``
(or another group column) before anything is assigned.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from cxr_cad.errors import ManifestError
from cxr_cad.manifest.schema import _rows_text, _text

log = logging.getLogger(__name__)


def _groups_and_labels(df: pd.DataFrame, label_col: str | None, group_col: str) -> tuple[np.ndarray, np.ndarray]:
    problems = []
    if group_col not in df.columns:
        problems.append(f"no {group_col!r} column to group by")
    if label_col is not None and label_col not in df.columns:
        problems.append(f"no {label_col!r} column to stratify by")
    if problems:
        raise ManifestError(problems)
    groups = _text(df[group_col]).to_numpy()
    labels = _text(df[label_col]).to_numpy() if label_col is not None else np.zeros(len(df), dtype=object)
    empty_g = np.flatnonzero(groups == "")
    if len(empty_g):
        problems.append(f"empty {group_col} in {_rows_text(empty_g)}")
    if label_col is not None:
        empty_l = np.flatnonzero(labels == "")
        if len(empty_l):
            problems.append(f"no {label_col} in {_rows_text(empty_l)}")
    if problems:
        raise ManifestError(problems)
    return groups, labels


def patient_folds(
    df: pd.DataFrame, n_folds: int, *, seed: int = 0, label_col: str | None = "label", group_col: str = "patient_id"
) -> np.ndarray:
    """Assign each row a fold in ``0..n_folds-1``, grouped by patient, stratified by label.

    Uses scikit-learn's ``StratifiedGroupKFold(shuffle=True, random_state=seed)``; every
    image of one patient lands in the same fold. ``label_col=None`` groups without
    stratifying. Deterministic for a given row order and seed.

    Returns:
        int64 array, one fold index per row (positional).

    Raises:
        ManifestError: ``n_folds < 2``, fewer patients than folds, missing/empty group or
            label values.
    """
    if int(n_folds) < 2:
        raise ManifestError([f"n_folds must be at least 2 (got {n_folds})"])
    groups, labels = _groups_and_labels(df, label_col, group_col)
    n_groups = len(set(groups))
    if n_groups < n_folds:
        raise ManifestError([f"{n_groups} patient(s) cannot fill {n_folds} folds; use fewer folds"])
    if label_col is not None:
        per_class = pd.Series(groups).groupby(labels).nunique()
        thin = per_class[per_class < n_folds]
        for cls, n in thin.items():
            log.warning(
                "class %r has only %d patient(s) for %d folds: some folds will have none of it", cls, n, n_folds
            )
    codes = pd.factorize(labels, sort=True)[0]
    folds = np.full(len(df), -1, dtype=np.int64)
    # imported here, not at the top: scikit-learn costs ~1.6 s, and every command that only
    # reads a manifest (and each one's early error path, < 3 s) imports this package
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=int(n_folds), shuffle=True, random_state=seed)
    for k, (_, test_idx) in enumerate(splitter.split(np.zeros(len(df)), codes, groups)):
        folds[test_idx] = k
    if (folds < 0).any():  # StratifiedGroupKFold covers every row; this guards a library change
        raise ManifestError([f"fold assignment left {_rows_text(np.flatnonzero(folds < 0))} without a fold"])
    per_group = pd.Series(folds).groupby(groups).nunique()
    if (per_group > 1).any():
        raise ManifestError([f"{int((per_group > 1).sum())} patient(s) were split across folds"])
    return folds


def grouped_split(
    df: pd.DataFrame,
    val_fraction: float,
    *,
    seed: int = 0,
    label_col: str | None = "label",
    group_col: str = "patient_id",
) -> tuple[np.ndarray, np.ndarray]:
    """Split rows into training and validation sets by patient, stratified by label.

    Patients are visited in a seeded random order (larger patients first) and each goes to
    validation when that brings the validation set's per-class image counts closer to
    ``val_fraction`` of each class's total, else to training. Both sides get at least one
    patient.

    Args:
        val_fraction: target share of images in validation, in (0, 1).

    Returns:
        ``(train_idx, val_idx)``: sorted positional row indices, disjoint, covering every row.

    Raises:
        ManifestError: ``val_fraction`` outside (0, 1), fewer than 2 patients, empty values.
    """
    if not 0.0 < float(val_fraction) < 1.0:
        raise ManifestError([f"val_fraction must be between 0 and 1 (got {val_fraction})"])
    groups, labels = _groups_and_labels(df, label_col, group_col)
    g_codes, g_names = pd.factorize(groups)
    l_codes, l_names = pd.factorize(labels, sort=True)
    n_groups = len(g_names)
    if n_groups < 2:
        raise ManifestError([f"{n_groups} patient(s) cannot be split into training and validation"])
    counts = np.zeros((n_groups, len(l_names)), dtype=np.int64)
    np.add.at(counts, (g_codes, l_codes), 1)
    target = counts.sum(axis=0) * float(val_fraction)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_groups)
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]
    in_val = np.zeros(n_groups, dtype=bool)
    current = np.zeros(len(l_names), dtype=np.float64)
    for g in order:
        before = np.abs(current - target).sum()
        after = np.abs(current + counts[g] - target).sum()
        if after < before:
            in_val[g] = True
            current += counts[g]
    if not in_val.any():
        in_val[order[-1]] = True
    if in_val.all():
        in_val[order[0]] = False
    val_rows = in_val[g_codes]
    return np.flatnonzero(~val_rows), np.flatnonzero(val_rows)


def iterative_group_assign(
    positives: np.ndarray, sizes: np.ndarray, proportions: np.ndarray, *, seed: int = 0
) -> np.ndarray:
    """Assign whole groups (patients) to subsets so every finding's positives are spread as
    ``proportions`` asks: iterative stratification (Sechidis, Tsoumakas and Vlahavas, ECML 2011)
    with patients as the unit.

    Repeat until every patient is placed: take the finding with the fewest positive patients
    still unplaced (ties: the lowest index); place each of those patients (largest first, ties
    in a seeded random order) in the subset that still wants most positives of that finding
    (ties: the one wanting most images, then the lowest index), and lower that subset's wants.
    Patients without any positive go, largest first, to the subset wanting most images.

    Args:
        positives: ``(G, K)`` positive images per patient and finding.
        sizes: ``(G,)`` images per patient.
        proportions: ``(S,)`` target share of each subset (sums to 1).

    Returns:
        ``(G,)`` int64 subset of every patient. Deterministic for a given input and seed.
    """
    positives = np.asarray(positives, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.float64)
    props = np.asarray(proportions, dtype=np.float64)
    n_groups, n_findings = positives.shape
    rng = np.random.default_rng(seed)
    tie = rng.permutation(n_groups)  # seeded tie-break among equal-sized patients
    want_pos = props[:, None] * positives.sum(axis=0)[None, :]  # (S, K)
    want_img = props * sizes.sum()
    subset = np.full(n_groups, -1, dtype=np.int64)
    has_pos = positives > 0

    def place(g: int, k: int | None) -> None:
        if k is None:
            s = int(np.argmax(want_img))
        else:
            best = want_pos[:, k].max()
            cand = np.flatnonzero(want_pos[:, k] == best)
            s = int(cand[np.argmax(want_img[cand])])
        subset[g] = s
        want_pos[s] -= positives[g]
        want_img[s] -= sizes[g]

    while True:
        open_ = subset < 0
        remaining = (has_pos & open_[:, None]).sum(axis=0)
        if not remaining.any():
            break
        k = int(np.argmin(np.where(remaining > 0, remaining, np.iinfo(np.int64).max)))
        members = np.flatnonzero(open_ & has_pos[:, k])
        for g in members[np.lexsort((tie[members], -sizes[members]))]:
            place(int(g), k)
    rest = np.flatnonzero(subset < 0)
    for g in rest[np.lexsort((tie[rest], -sizes[rest]))]:
        place(int(g), None)
    return subset


def _multilabel_groups(df: pd.DataFrame, y: np.ndarray, group_col: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(patient code of each row, positives per patient and finding, images per patient)."""
    groups, _ = _groups_and_labels(df, None, group_col)
    codes, names = pd.factorize(groups)
    positives = np.zeros((len(names), y.shape[1]), dtype=np.int64)
    np.add.at(positives, codes, (y == 1).astype(np.int64))
    sizes = np.bincount(codes, minlength=len(names))
    return codes, positives, sizes


def multilabel_patient_folds(
    df: pd.DataFrame, y: np.ndarray, n_folds: int, *, seed: int = 0, group_col: str = "patient_id"
) -> np.ndarray:
    """Folds grouped by patient and stratified over findings (:func:`iterative_group_assign`).

    ``y``: ``(n, K)`` finding matrix (1 present, 0 absent, -1 unknown; only 1 counts).
    Returns one fold index per row. Raises ManifestError as :func:`patient_folds`."""
    if int(n_folds) < 2:
        raise ManifestError([f"n_folds must be at least 2 (got {n_folds})"])
    codes, positives, sizes = _multilabel_groups(df, y, group_col)
    if len(sizes) < n_folds:
        raise ManifestError([f"{len(sizes)} patient(s) cannot fill {n_folds} folds; use fewer folds"])
    per_group = iterative_group_assign(positives, sizes, np.full(int(n_folds), 1.0 / int(n_folds)), seed=seed)
    return per_group[codes]


def multilabel_grouped_split(
    df: pd.DataFrame, y: np.ndarray, val_fraction: float, *, seed: int = 0, group_col: str = "patient_id"
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`grouped_split` for findings: ``(train_idx, val_idx)`` by patient, stratified over
    the findings of ``y`` (:func:`iterative_group_assign`); both sides get a patient."""
    if not 0.0 < float(val_fraction) < 1.0:
        raise ManifestError([f"val_fraction must be between 0 and 1 (got {val_fraction})"])
    codes, positives, sizes = _multilabel_groups(df, y, group_col)
    if len(sizes) < 2:
        raise ManifestError([f"{len(sizes)} patient(s) cannot be split into training and validation"])
    in_val = iterative_group_assign(positives, sizes, np.array([1.0 - val_fraction, val_fraction]), seed=seed) == 1
    if not in_val.any():
        in_val[int(np.argmin(sizes))] = True
    if in_val.all():
        in_val[int(np.argmax(sizes))] = False
    rows = in_val[codes]
    return np.flatnonzero(~rows), np.flatnonzero(rows)
