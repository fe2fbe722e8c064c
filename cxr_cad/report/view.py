"""Turn ``metrics.json`` data into one document model that both renderers draw.

The HTML and the PDF are drawn from the same list of sections and blocks, and every
number in them is formatted here, once, from the values in ``metrics.json``, so the
three files always show the same numbers. Block kinds: ``paragraph``, ``note``
(highlighted), ``kv`` (two-column table), ``table``, ``figure``, ``figrow`` (figures side by
side), ``gallery``, ``headline`` (the boxed summary that opens the report). Every interval
label names the report's confidence level (``level(d)``, e.g. "90% CI").
"""

from __future__ import annotations

import math
from typing import Any

from cxr_cad.report.text import INTENDED_USE, LIMITATIONS, methods_paragraphs

NOT_ESTIMABLE = "not estimable"
DASH = "\u2013"  # en dash between the ends of an interval


def level(d: dict) -> str:
    """The confidence level as a label, e.g. ``95%`` (from ``settings.confidence_level``)."""
    return f"{100 * d['settings']['confidence_level']:g}%"


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt_num(x: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals; ``not estimable`` for null/NaN."""
    return f"{x:.{digits}f}" if _finite(x) else NOT_ESTIMABLE


def fmt_threshold(x: Any) -> str:
    """A threshold with 4 decimals, or 6 significant digits when 4 decimals would show 0.0000/1.0000."""
    if not _finite(x):
        return NOT_ESTIMABLE
    text = f"{x:.4f}"
    return f"{x:.6g}" if text in ("0.0000", "1.0000") and x not in (0.0, 1.0) else text


def fmt_pct(x: Any, digits: int = 1) -> str:
    """A proportion in [0, 1] as a percentage, e.g. ``0.9123`` -> ``91.2%``."""
    return f"{100 * x:.{digits}f}%" if _finite(x) else NOT_ESTIMABLE


def fmt_interval(low: Any, high: Any, *, pct: bool = False, digits: int = 3) -> str:
    """``(low–high)``; percentages with one decimal when ``pct``."""
    if not (_finite(low) and _finite(high)):
        return "(CI not estimable)"
    sep = " to " if low < 0 else DASH  # "-0.031–0.435" would read as a range of negatives
    if pct:
        return f"({100 * low:.1f}{sep}{100 * high:.1f}%)"
    return f"({low:.{digits}f}{sep}{high:.{digits}f})"


def fmt_prop(d: dict | None) -> str:
    """A proportion dict ``{"value", "low", "high"}`` -> ``91.2% (87.1–94.4%)``."""
    if not d or not _finite(d.get("value")):
        return NOT_ESTIMABLE
    return f"{fmt_pct(d['value'])} {fmt_interval(d.get('low'), d.get('high'), pct=True)}"


def fmt_ratio(d: dict | None) -> str:
    """A likelihood ratio dict -> ``4.21 (3.10–5.72)``."""
    if not d or not _finite(d.get("value")):
        return NOT_ESTIMABLE
    return f"{d['value']:.2f} {fmt_interval(d.get('low'), d.get('high'), digits=2)}"


def fmt_auc(ci: dict | None) -> str:
    """An AucCI dict -> ``0.912 (0.871–0.944)``."""
    if not ci or not _finite(ci.get("auc")):
        return NOT_ESTIMABLE
    return f"{ci['auc']:.3f} {fmt_interval(ci.get('low'), ci.get('high'))}"


def fmt_p(p: Any) -> str:
    """A p-value: ``p = 0.012``, ``p < 0.001``."""
    if not _finite(p):
        return NOT_ESTIMABLE
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def fmt_k_n(d: dict | None) -> str:
    return f"{d['k']}/{d['n']}" if d and "k" in d and "n" in d else ""


def fmt_maybe_ci(x: Any, *, pct: bool) -> str:
    """A metric that may be a bare float or a dict with an interval (F1, balanced accuracy)."""
    if isinstance(x, dict):
        return fmt_prop(x) if pct else fmt_ratio(x)
    if not _finite(x):
        return NOT_ESTIMABLE
    return f"{fmt_pct(x) if pct else fmt_num(x)} (no CI)"


def category_key(col: str, value: str) -> tuple:
    """Display order of a category: age bands by age, '(missing)'/'unknown' last, else by name."""
    v = str(value)
    if v in ("(missing)", "unknown", ""):
        return (2, 0.0, v)
    if col == "age_band":
        digits = "".join(ch if ch.isdigit() or ch == "." else " " for ch in v).split()
        lo = -1.0 if v.startswith("<") else float(digits[0]) if digits else 1e9
        return (0, lo, v)
    return (1, 0.0, v)


def _kv(rows: list[tuple[str, str]], caption: str = "") -> dict:
    return {"kind": "kv", "caption": caption, "rows": [[k, v] for k, v in rows]}


def _table(columns: list[str], rows: list[list[str]], caption: str = "", widths: list[float] | None = None) -> dict:
    return {
        "kind": "table",
        "caption": caption,
        "columns": columns,
        "rows": rows,
        "widths": widths or [1.0] * len(columns),
    }


def _header(d: dict) -> list[dict]:
    m, c = d.get("model") or {}, d["cohort"]
    blocks = []
    if m:
        thr = m.get("threshold")
        blocks.append(
            _kv(
                [
                    ("Model bundle", str(m.get("name", "unnamed"))),
                    ("Bundle SHA-256", str(m.get("sha256", "not recorded"))),
                    (
                        "Classes (positive class)",
                        f"{', '.join(map(str, m.get('classes') or []))} ({d['positive_class']})",
                    ),
                    (
                        "Decision threshold used",
                        (d.get("threshold_provenance") or {}).get("text") or fmt_threshold(thr),
                    ),
                    ("Training cohort (manifest hash)", str(m.get("training_manifest_hash") or "not recorded")),
                    ("Model created", str(m.get("created") or "not recorded")),
                ],
                "Model",
            )
        )
    else:
        blocks.append(
            {
                "kind": "note",
                "text": "No model bundle was given: this report was written from a "
                "predictions table, so the model cannot be identified beyond what is stated here.",
            }
        )
    blocks.append(
        _kv(
            [
                ("Cohort", str(c.get("name") or "unnamed")),
                ("Manifest hash", str(c.get("manifest_hash") or "not recorded")),
                ("Cohort date", str(c.get("date") or "not recorded")),
                ("Report generated (UTC)", d["generated_utc"]),
            ],
            "Cohort",
        )
    )
    sw = d["software"]
    blocks.append(_kv([("Software versions", ", ".join(f"{k} {v}" for k, v in sw.items()))], "Software"))
    blocks.append({"kind": "paragraph", "text": INTENDED_USE})
    blocks.append({"kind": "note", "text": LIMITATIONS})
    return blocks


def _cohort(d: dict) -> list[dict]:
    c = d["cohort"]
    rows = [
        ("Images evaluated", str(c["n_images_evaluated"])),
        ("Images not evaluated (rejected)", str(c["n_rejected"])),
        ("Patients", str(c["n_patients"]) if c.get("n_patients") is not None else "not recorded"),
    ]
    rows += [(f"Images labelled {k}", str(v)) for k, v in c["class_counts"].items()]
    blocks = [_kv(rows, "Images and patients")]
    if c["rejected_by_reason"]:
        blocks.append(
            _table(
                ["Rejection reason", "Images"],
                [[k, str(v)] for k, v in c["rejected_by_reason"].items()],
                "Images not evaluated, by reason code",
                [3, 1],
            )
        )
    from cxr_cad.report.build import SUBGROUP_COLUMNS

    n = max(c["n_images_evaluated"], 1)
    for col, counts in c.get("distributions", {}).items():
        blocks.append(
            _table(
                [SUBGROUP_COLUMNS.get(col, col), "Images", "Share"],
                [
                    [k, str(v), fmt_pct(v / n)]
                    for k, v in sorted(counts.items(), key=lambda kv: category_key(col, kv[0]))
                ],
                f"Distribution of {SUBGROUP_COLUMNS.get(col, col).lower()}",
                [3, 1, 1],
            )
        )
    return blocks


def _confusion(op: dict, neg: str, pos: str) -> dict:
    cm = op["metrics"]["confusion"]
    return _table(
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


def _study_table(d: dict) -> list[dict]:
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
    rows_spec = [("Accuracy", "accuracy", "prop")]
    rows_spec += [(f"Class accuracy: {cls}", ("per_class_accuracy", cls), "prop") for cls in (neg, pos)]
    rows_spec += [
        ("Sensitivity", "sensitivity", "prop"),
        ("Specificity", "specificity", "prop"),
        ("PPV (precision)", "ppv", "prop"),
        ("NPV", "npv", "prop"),
        ("F1 score", "f1_ci", "num"),
        ("Balanced accuracy", "balanced_accuracy_ci", "pct"),
        ("Positive likelihood ratio", "lr_pos", "ratio"),
        ("Negative likelihood ratio", "lr_neg", "ratio"),
    ]
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
    blocks.append(
        _table(
            cols,
            rows,
            "The study's table (as in Chandola et al. 2021, ch. 4): metrics at each operating point",
            [2.2] + [2.4, 0.8] * len(ops),
        )
    )
    return blocks


def _roc(d: dict) -> list[dict]:
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
        _kv(rows, "Area under the ROC curve"),
    ]
    cv = d.get("cross_validation")
    if cv and cv.get("folds"):
        rows = [[str(f["fold"]), str(f["n"]), str(f["n_pos"]), fmt_num(f["auc"])] for f in cv["folds"]]
        sm = cv["auc_summary"]
        rows.append(["mean \u00b1 SD", "", "", f"{fmt_num(sm['mean'])} \u00b1 {fmt_num(sm['sd'])}"])
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
            blocks.append(_table(["Fold", "Images", "Positive", "AUC"], rows, "AUC per held-out fold", [1, 1, 1, 1]))
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
    return _table(
        ["Fold", "Images (positive)", "Threshold", f"AUC (DeLong {lv} CI)"] + [f"{t} ({lv} CI)" for _, t in _FOLD_KEYS],
        rows,
        "Each held-out fold at its own threshold (chosen on that fold's training data)",
        [0.75, 1.0, 0.9, 1.9, 1.8, 1.8, 1.8],
    )


def _subgroups(d: dict) -> list[dict]:
    from cxr_cad.report.build import SUBGROUP_COLUMNS

    if not d["subgroups"]:
        return [
            {
                "kind": "paragraph",
                "text": "No subgroup information (view position, sex, age, manufacturer) is present in this cohort.",
            }
        ]
    which = (
        "the model's stored threshold"
        if d["subgroup_threshold"] == "model"
        else "the Youden threshold (no model threshold was given)"
    )
    lv = level(d)
    blocks = [
        {
            "kind": "paragraph",
            "text": f"Sensitivity and specificity at {which}; AUC with DeLong {lv} CI, "
            f"proportions with Wilson {lv} CI. 'not estimable' where a subgroup holds one class only. "
            "Subgroup results are not corrected for multiplicity: with several subgroups, some differences "
            "arise by chance. Subgroups marked * hold fewer than 30 images or fewer than 10 of a class; "
            "read them as descriptive only.",
        }
    ]
    for col, rows in d["subgroups"].items():
        out = []
        for r in sorted(rows, key=lambda r: category_key(col, r["value"])):
            est = r.get("estimable", True)
            auc = fmt_auc({"auc": r["auc"], "low": r["auc_low"], "high": r["auc_high"]}) if est else NOT_ESTIMABLE
            sens = fmt_prop({"value": r["sensitivity"], "low": r["sensitivity_low"], "high": r["sensitivity_high"]})
            spec = fmt_prop({"value": r["specificity"], "low": r["specificity_low"], "high": r["specificity_high"]})
            small = r["n"] < 30 or min(r["n_pos"], r["n_neg"]) < 10
            out.append(
                [str(r["value"]) + (" *" if small else ""), str(r["n"]), f"{r['n_pos']}/{r['n_neg']}", auc, sens, spec]
            )
        name = SUBGROUP_COLUMNS.get(col, col)
        blocks.append(
            _table(
                [name, "Images", "Pos/Neg", f"AUC ({lv} CI)", f"Sensitivity ({lv} CI)", f"Specificity ({lv} CI)"],
                out,
                f"Subgroups by {name.lower()}",
                [1.3, 0.7, 0.8, 1.9, 1.9, 1.9],
            )
        )
    return blocks


def _gradcam(d: dict) -> list[dict]:
    g = d.get("gradcam") or {}
    if not g.get("cases"):
        return [{"kind": "note", "text": g.get("note") or "Grad-CAM explanations were not produced."}]
    items = [{"file": c["file"], "caption": c["caption"]} for c in g["cases"]]
    return [{"kind": "paragraph", "text": g.get("note", "")}, {"kind": "gallery", "items": items}]


def _comparison(d: dict) -> list[dict]:
    c = d["comparison"]
    t = c["paired_delong"]
    return [
        {"kind": "figure", "file": "comparison_roc.svg", "caption": "ROC curves of both models on the same images."},
        _kv(
            [
                (f"AUC, {c['name_a']}", fmt_auc(c["auc_a_delong"])),
                (f"AUC, {c['name_b']}", fmt_auc(c["auc_b_delong"])),
                (
                    f"Difference (A \u2212 B), {level(d)} CI",
                    f"{fmt_num(t['diff'])} {fmt_interval(t['low'], t['high'])}",
                ),
                ("Paired DeLong test", f"z = {fmt_num(t['z'], 2)}, {fmt_p(t['p_value'])}"),
                ("Images scored by both models", str(c["n"])),
            ],
            "Paired comparison (DeLong 1988)",
        ),
    ]


def build_document(d: dict) -> dict:
    """The document model: title plus numbered sections of blocks, drawn by HTML and PDF.

    The headline box comes first; the CLAIM / TRIPOD+AI checklist appendix comes last and
    points at the sections by number.
    """
    from cxr_cad.report import view_clinical as vc
    from cxr_cad.report.checklist import checklist_blocks

    study = _study_table(d) + vc.patient_level(d)
    sections = [
        ("summary", "Summary", vc.headline(d)),
        ("header", "Model, cohort and intended use", _header(d)),
        ("population", "Population and reference standard", vc.population(d)),
        ("model", "Model description", vc.model_description(d)),
        ("cohort", "Cohort summary", _cohort(d)),
        ("shift", "Cohort shift", vc.shift(d)),
        ("study", "Diagnostic performance (the study's table)", study),
        ("roc", "ROC analysis", _roc(d)),
        ("utility", "Clinical utility", vc.utility(d)),
        ("calibration", "Calibration", vc.calibration(d)),
        ("subgroups", "Subgroups", _subgroups(d)),
        ("failures", "Failure analysis", vc.failures(d)),
        ("explanations", "Explanations (Grad-CAM)", _gradcam(d)),
    ]
    if d.get("comparison"):
        sections.append(("comparison", "Comparison of two models on this cohort", _comparison(d)))
    sections.append(("methods", "Methods", [{"kind": "paragraph", "text": p} for p in methods_paragraphs(d)]))
    if d.get("undefined_statistics"):
        sections[-1][2].append(
            {
                "kind": "note",
                "text": "Statistics that are undefined for these data and "
                "are shown as 'not estimable': " + "; ".join(d["undefined_statistics"]),
            }
        )
    numbers = {sid: (n + 1, title) for n, (sid, title, _) in enumerate(sections)}
    sections.append(("checklist", "Appendix: CLAIM 2024 and TRIPOD+AI 2024 checklist", checklist_blocks(d, numbers)))
    title = "Chest radiograph CAD: clinical evaluation report"
    m = d.get("model") or {}
    sub = f"Model {m.get('name', '(not given)')} on cohort {d['cohort'].get('name') or '(unnamed)'}"
    return {
        "title": title,
        "subtitle": sub,
        "sections": [{"id": i, "number": n + 1, "title": t, "blocks": b} for n, (i, t, b) in enumerate(sections)],
    }
