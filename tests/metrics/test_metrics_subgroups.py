"""Subgroup tables, age bands and multi-class helpers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import confusion_matrix, roc_auc_score

from cxr_cad.errors import ConfigError
from cxr_cad.metrics import (
    UndefinedMetricWarning,
    age_band,
    binary_metrics,
    confusion_matrix_k,
    delong_auc_ci,
    one_vs_rest_auc,
    per_class_accuracy,
    subgroup_table,
)


@pytest.mark.parametrize(
    "value,band",
    [
        (45.0, "40-64y"),
        (0.5, "<1y"),
        (0.1917, "<1y"),
        (0.0082, "<1y"),
        (0, "<1y"),
        (4, "1-4y"),
        (12, "12-17y"),
        (80, "80+y"),
        (3, "1-4y"),
        (17.9, "12-17y"),
        (65, "65-79y"),
        (None, "unknown"),
        (float("nan"), "unknown"),
        (float("inf"), "unknown"),
        (-1, "unknown"),
    ],
)
def test_age_band(value, band):
    assert age_band(value) == band


def test_age_band_custom_edges():
    assert age_band(30, edges=(18, 65)) == "18-64y"
    assert age_band(70, edges=(18, 65)) == "65+y"
    with pytest.raises(ConfigError):
        age_band(3, edges=(5, 2))


def _table():
    rng = np.random.default_rng(0)
    n = 200
    df = pd.DataFrame(
        {
            "label": rng.choice(["NORMAL", "PNEUMONIA"], n),
            "view_position": rng.choice(["PA", "AP", ""], n),
            "patient_sex": rng.choice(["F", "M", None], n),
        }
    )
    df["probability"] = np.clip(rng.normal((df["label"] == "PNEUMONIA") * 0.4 + 0.3, 0.2), 0, 1)
    # a subgroup with one class only
    df.loc[:4, "view_position"] = "LL"
    df.loc[:4, "label"] = "NORMAL"
    return df


def test_subgroup_table_matches_direct_metrics():
    df = _table()
    with pytest.warns(UndefinedMetricWarning, match="view_position=LL"):
        t = subgroup_table(df, ["view_position", "patient_sex"], positive_class="PNEUMONIA", threshold=0.5)
    assert t.iloc[0]["column"] == "(all)" and t.iloc[0]["n"] == len(df)
    assert set(t.loc[t["column"] == "view_position", "value"]) == {"PA", "AP", "LL", "(missing)"}
    assert t.loc[t["column"] == "patient_sex", "n"].sum() == len(df)
    for _, row in t[t["column"] != "(all)"].iterrows():
        values = df[row["column"]].fillna("").replace("", "(missing)")
        sub = df[values == row["value"]]
        y = (sub["label"] == "PNEUMONIA").to_numpy(int)
        assert row["n"] == len(sub) and row["n_pos"] == y.sum()
        if row["estimable"]:
            assert row["auc"] == pytest.approx(roc_auc_score(y, sub["probability"]))
            assert row["auc_low"] == pytest.approx(delong_auc_ci(y, sub["probability"]).low)
            m = binary_metrics(y, sub["probability"].to_numpy(), threshold=0.5)
            assert row["sensitivity"] == m["sensitivity"]["value"]
            assert row["specificity_low"] == m["specificity"]["low"]
        else:
            assert math.isnan(row["auc"]) and row["note"].startswith("not estimable")
    ll = t[(t["column"] == "view_position") & (t["value"] == "LL")].iloc[0]
    assert ll["n"] == 5 and not ll["estimable"] and math.isnan(ll["sensitivity"])


def test_subgroup_table_missing_column():
    with pytest.raises(ValueError, match="manufacturer"):
        subgroup_table(_table(), "manufacturer", positive_class="PNEUMONIA", threshold=0.5)


def test_multiclass_against_sklearn():
    rng = np.random.default_rng(1)
    classes = ["NORMAL", "BACTERIAL", "VIRAL"]
    y = rng.integers(0, 3, 150)
    logits = rng.normal(0, 1, (150, 3)) + 1.5 * np.eye(3)[y]
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    names = np.array(classes)[y]
    aucs = one_vs_rest_auc(names, prob, classes)
    for k, c in enumerate(classes):
        assert aucs[c].auc == pytest.approx(roc_auc_score(y == k, prob[:, k]))
    # integer labels are labels, never positions into `classes`
    with pytest.raises(ValueError, match="not among"):
        one_vs_rest_auc(y, prob, classes)
    int_classes = [3, 1, 2]  # class "3" is column 0
    int_labels = np.array(int_classes)[y]
    assert one_vs_rest_auc(int_labels, prob, int_classes)["2"].auc == pytest.approx(aucs["VIRAL"].auc)
    np.testing.assert_array_equal(confusion_matrix_k(int_labels, int_labels, int_classes), np.diag(np.bincount(y)))
    pred = np.array(classes)[prob.argmax(axis=1)]
    cm = confusion_matrix_k(names, pred, classes)
    np.testing.assert_array_equal(cm, confusion_matrix(names, pred, labels=classes))
    acc = per_class_accuracy(names, pred, classes)
    assert acc["BACTERIAL"]["value"] == pytest.approx(cm[1, 1] / cm[1].sum())
    with pytest.raises(ValueError, match="not among"):
        confusion_matrix_k(["X"], ["NORMAL"], classes)
    with pytest.raises(ValueError, match="shape"):
        one_vs_rest_auc(names, prob[:, :2], classes)
