"""Document blocks of the diagnostic performance: the study's table at each operating point
(with confusion matrices) and the ROC analysis, cross-validation folds included."""

from __future__ import annotations

from cxr_cad.report.fmt import (
    NOT_ESTIMABLE,
    fmt_auc,
    fmt_interval,
    fmt_k_n,
    fmt_maybe_ci,
    fmt_num,
    fmt_pct,
    fmt_prop,
    fmt_ratio,
    fmt_threshold,
    kv,
    level,
    table,
)


def _confusion(op: dict, neg: str, pos: str) -> dict:
    cm = op["metrics"]["confusion"]
    return table(
        ["", f"Called {neg}", f"Called {pos}"],
        [[f"Truly {neg}", str(cm["tn"]), str(cm["fp"])], [f"Truly {pos}", str(cm["fn"]), str(cm["tp"])]],
        f"Confusion matrix: {op['label']}"
        + (f", threshold {fmt_threshold(op['threshold'])}" if op["threshold"] is not None else ""),
        [2, 1, 1],
    )


_OP_EXPLAINED = {
    "model": "",
    "folds": "In cross-validation every image is decided at the threshold of the model that scored it, "
    "chosen on that fold's training data only: these are the honest out-of-fold numbers.",
    "youden": "The Youden threshold is chosen on this cohort itself.",
}


def study_table(d: dict) -> list[dict]:
    """The decision rule, the confusion matrices and the study's table at each operating point."""
    ops, neg, pos = d["operating_points"], d["negative_class"], d["positive_class"]
    if not ops:
        return [
            {
                "kind": "note",
                "text": "No operating point could be evaluated (the cohort has one class "
                "and no model threshold was given).",
            }
        ]
    blocks: list[dict] = [
        {
            "kind": "paragraph",
            "text": (
                "Decision rule: an image is called "
                + pos
                + " when its score is at least the threshold. "
                + " ".join(_OP_EXPLAINED[o["name"]] for o in ops)
                + (
                    f" Threshold: {(d.get('threshold_provenance') or {}).get('text')}."
                    if any(o["name"] == "model" for o in ops)
                    else ""
                )
            ),
        }
    ]
    if any(o["name"] == "youden" for o in ops):
        blocks.append(
            {
                "kind": "note",
                "text": "The Youden threshold is chosen on this same cohort to maximise "
                "sensitivity + specificity, so the numbers at that threshold are optimistic: they show "
                "the best this model could do here, not what to expect on new patients.",
            }
        )
    blocks += [_confusion(o, neg, pos) for o in ops]
    blocks.append(_metrics_table(d, ops, neg, pos))
    return blocks


#: rows of the study's table: title, metrics key (or (key, class)), how the value is shown
_STUDY_ROWS: list[tuple[str, str, str]] = [
    ("Sensitivity", "sensitivity", "prop"),
    ("Specificity", "specificity", "prop"),
    ("PPV (precision)", "ppv", "prop"),
    ("NPV", "npv", "prop"),
    ("F1 score", "f1_ci", "num"),
    ("Balanced accuracy", "balanced_accuracy_ci", "pct"),
    ("Positive likelihood ratio", "lr_pos", "ratio"),
    ("Negative likelihood ratio", "lr_neg", "ratio"),
]


def _metrics_table(d: dict, ops: list[dict], neg: str, pos: str) -> dict:
    """The study's table: every metric (value, CI, k/n) at every operating point."""
    rows_spec: list[tuple[str, str | tuple[str, str], str]] = [("Accuracy", "accuracy", "prop")]
    rows_spec += [(f"Class accuracy: {cls}", ("per_class_accuracy", cls), "prop") for cls in (neg, pos)]
    rows_spec += _STUDY_ROWS
    rows = []
    for title, key, kind in rows_spec:
        row = [title]
        for o in ops:
            m = o["metrics"]
            val = m[key[0]].get(key[1]) if isinstance(key, tuple) else m.get(key)
            if kind == "prop":
                row += [fmt_prop(val), fmt_k_n(val)]
            elif kind == "ratio":
                row += [fmt_ratio(val), ""]
            else:
                row += [fmt_maybe_ci(val, pct=kind == "pct"), ""]
        rows.append(row)
    cols = ["Metric"]
    for o in ops:
        if o["name"] == "folds":
            cols += [f"Each fold's own threshold: value ({level(d)} CI)", "k/n"]
            continue
        short = "Fixed threshold" if o["name"] == "model" else "Youden (optimistic)"
        cols += [f"{short} {fmt_threshold(o['threshold'])}: value ({level(d)} CI)", "k/n"]
    return table(
        cols,
        rows,
        "The study's table (as in Chandola et al. 2021, ch. 4): metrics at each operating point",
        [2.2] + [2.4, 0.8] * len(ops),
    )


def roc(d: dict) -> list[dict]:
    """The ROC figure, the AUC with every interval, and the cross-validation folds."""
    auc = d["auc"]
    s = d["settings"]
    lv = level(d)
    wald = auc["delong"]
    rows = [
        (f"AUC, DeLong {lv} CI, logit (primary)", fmt_auc(auc.get("delong_logit"))),
        (f"AUC, DeLong {lv} CI, Wald", fmt_auc(wald) + (" (clipped at 1)" if wald.get("clipped") else "")),
        (
            f"AUC, bootstrap {lv} CI",
            f"{fmt_auc(auc['bootstrap'])} ({s['n_bootstrap']} stratified resamples, seed {s['bootstrap_seed']})",
        ),
    ]
    pl = d.get("patient_level")
    if pl:
        a = pl["auc"]
        rows.append(
            (
                f"AUC, patient cluster bootstrap {lv} CI",
                f"{fmt_num(auc['delong']['auc'])} {fmt_interval(a['low'], a['high'])} ({pl['n_patients']} "
                f"patients, {pl['n_resamples']} resamples)",
            )
        )
    rows.append(("Positive / negative images", f"{wald['n_pos']} / {wald['n_neg']}"))
    blocks = [
        {"kind": "figure", "file": "roc.svg", "caption": "ROC curve with the operating points marked."},
        kv(rows, "Area under the ROC curve"),
    ]
    cv = d.get("cross_validation")
    if cv and cv.get("folds"):
        fold_rows = [[str(f["fold"]), str(f["n"]), str(f["n_pos"]), fmt_num(f["auc"])] for f in cv["folds"]]
        sm = cv["auc_summary"]
        fold_rows.append(["mean \u00b1 SD", "", "", f"{fmt_num(sm['mean'])} \u00b1 {fmt_num(sm['sd'])}"])
        blocks.append(
            {
                "kind": "figure",
                "file": "cv_roc.svg",
                "caption": "Cross-validation: one ROC curve per held-out fold, their vertical mean "
                "and the mean \u00b1 1 SD band.",
            }
        )
        if cv.get("per_fold_metrics"):
            blocks.append(_per_fold_table(cv, level(d)))
        else:
            blocks.append(
                table(["Fold", "Images", "Positive", "AUC"], fold_rows, "AUC per held-out fold", [1, 1, 1, 1])
            )
    return blocks


_FOLD_KEYS = (("sensitivity", "Sensitivity"), ("specificity", "Specificity"), ("accuracy", "Accuracy"))


def _per_fold_table(cv: dict, lv: str) -> dict:
    """Each fold at its own threshold (chosen inside its training folds), then mean +/- SD."""
    rows = []
    for f in cv["per_fold_metrics"]:
        m = f.get("metrics") or {}
        rows.append(
            [
                str(f["fold"]),
                f"{f['n']} ({f.get('n_pos', '?')})",
                fmt_threshold(f.get("threshold")),
                fmt_auc(f.get("auc")),
            ]
            + [fmt_prop(m.get(k)) for k, _ in _FOLD_KEYS]
        )
    across = cv.get("across_folds") or {}

    def msd(key: str, pct: bool) -> str:
        v = across.get(key) or {}
        if v.get("mean") is None:
            return NOT_ESTIMABLE
        f = fmt_pct if pct else fmt_num
        return f"{f(v['mean'])} \u00b1 {f(v.get('sd'))}"

    rows.append(["mean \u00b1 SD", "", "", msd("auc", False)] + [msd(k, True) for k, _ in _FOLD_KEYS])
    return table(
        ["Fold", "Images (positive)", "Threshold", f"AUC (DeLong {lv} CI)"] + [f"{t} ({lv} CI)" for _, t in _FOLD_KEYS],
        rows,
        "Each held-out fold at its own threshold (chosen on that fold's training data)",
        [0.75, 1.0, 0.9, 1.9, 1.8, 1.8, 1.8],
    )
