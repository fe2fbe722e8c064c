"""The labelled site rows an adaptation learns from, and the evaluation rows it must not see.

:func:`split_site` draws ``n`` labelled images from a site manifest, **patient-grouped** (all
images of a patient or none) and **stratified** (each class in proportion to the manifest),
seeded; the rest of the manifest (other patients only) is what a comparison may be evaluated
on. :func:`exclude_site` removes the site images, and every image of a site patient, from any
evaluation table, and says how many it removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxr_cad.errors import UsageError

__all__ = ["SITE_COLUMNS", "SiteSplit", "exclude_site", "site_table", "split_site"]

#: The columns of ``site_rows.csv`` (those the manifest has).
SITE_COLUMNS = ("sop_instance_uid", "sha256", "patient_id", "path", "label")


@dataclass
class SiteSplit:
    """``site``: the rows adapted on; ``rest``: the manifest's other patients; ``group_col``."""

    site: pd.DataFrame
    rest: pd.DataFrame
    group_col: str


def _groups(df: pd.DataFrame, group_col: str) -> pd.Series:
    if group_col in df.columns and (df[group_col].astype(str) != "").all():
        return df[group_col].astype(str)
    key = "sop_instance_uid" if "sop_instance_uid" in df.columns else "path"
    return df[key].astype(str)  # no patient column: every image its own group


def split_site(
    df: pd.DataFrame,
    n: int | None,
    *,
    seed: int = 0,
    label_col: str = "label",
    group_col: str = "patient_id",
    classes: Sequence[str] | None = None,
) -> SiteSplit:
    """``n`` labelled site images (None: all of them), patient-grouped and stratified by class.

    Patients are shuffled (seeded) within their class (a patient's class: the label of most of
    their images) and taken in turn until each class has its share ``round(n * prevalence)``
    of images (at least one patient per class); a patient whose images would overshoot the
    share by more than half of them is skipped. Raises UsageError when ``n`` is not in
    ``[2, len(df))`` or a class has no patient.
    """
    df = df.reset_index(drop=True)
    if label_col not in df.columns:
        raise UsageError(f"the site manifest has no {label_col!r} column; adaptation needs labelled site images")
    labels = df[label_col].astype(str)
    if classes is not None:
        unknown = sorted(set(labels) - {str(c) for c in classes})
        if unknown:
            raise UsageError(f"site labels {unknown} are not classes of the model {list(classes)}")
    if n is None:
        return SiteSplit(df, df.iloc[0:0], group_col)
    if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n < len(df):
        raise UsageError(f"--n-site must be an integer in [2, {len(df)}) (the manifest has {len(df)} images), not {n}")
    groups = _groups(df, group_col)
    frame = pd.DataFrame({"g": groups, "y": labels})
    patient_class = frame.groupby("g")["y"].agg(lambda s: s.value_counts().index[0])
    sizes = frame.groupby("g").size()
    rng = np.random.default_rng(seed)
    prevalence = labels.value_counts(normalize=True)
    chosen: list[str] = []
    for cls in sorted(prevalence.index):
        want = max(1, int(round(n * prevalence[cls])))
        patients = patient_class.index[patient_class == cls].to_numpy()
        if len(patients) == 0:
            raise UsageError(f"no patient of class {cls!r} in the site manifest")
        patients = patients[rng.permutation(len(patients))]
        got = 0
        for p in patients:
            if got >= want:
                break
            if got and got + sizes[p] > want + sizes[p] / 2:
                continue
            chosen.append(p)
            got += int(sizes[p])
    mask = groups.isin(set(chosen)).to_numpy()
    site, rest = df[mask], df[~mask]
    if rest.empty:
        raise UsageError(f"--n-site {n} takes every patient of the site manifest; leave some for evaluation")
    return SiteSplit(site.reset_index(drop=True), rest.reset_index(drop=True), group_col)


def site_table(site: pd.DataFrame) -> pd.DataFrame:
    """``site_rows.csv``: the identity of every site image used (columns :data:`SITE_COLUMNS` present)."""
    return site[[c for c in SITE_COLUMNS if c in site.columns]].astype(str).reset_index(drop=True)


def exclude_site(eval_df: pd.DataFrame, site: pd.DataFrame, group_col: str = "patient_id") -> tuple[pd.DataFrame, int]:
    """``eval_df`` without the site images (same ``sop_instance_uid`` or ``sha256``) and without
    any image of a site patient (same ``group_col``); returns ``(kept, n_removed)``."""
    drop = np.zeros(len(eval_df), bool)
    for col in ("sop_instance_uid", "sha256", group_col):
        if col in eval_df.columns and col in site.columns:
            used = set(site[col].astype(str)) - {""}
            drop |= eval_df[col].astype(str).isin(used).to_numpy()
    return eval_df[~drop].reset_index(drop=True), int(drop.sum())
