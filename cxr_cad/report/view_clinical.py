"""Document blocks a clinical reviewer reads first: the headline box, population and reference
standard, model description, cohort shift, clinical utility, patient-level intervals and the
failure table (calibration: :mod:`cxr_cad.report.view_calibration`). Numbers are formatted from
``metrics.json`` with :mod:`cxr_cad.report.fmt`."""

from __future__ import annotations

from pathlib import Path

from cxr_cad.report.clinical import NOT_RECORDED, POPULATION_ITEMS
from cxr_cad.report.fmt import (
    NOT_ESTIMABLE,
    fmt_auc,
    fmt_interval,
    fmt_num,
    fmt_p,
    fmt_pct,
    fmt_prop,
    fmt_threshold,
    kv,
    level,
    table,
)

PRIMARY_CI_TEXT = (
    "Primary intervals are image-level (Wilson for proportions, DeLong on the logit scale for the "
    "AUC). Patient-level intervals (cluster bootstrap over patients) are shown beside them; where "
    "they are wider, images of one patient are correlated and the patient-level interval is the "
    "safer reading."
)


def primary_op(d: dict) -> dict | None:
    """The operating point the headline reports: the fixed threshold, else each fold's own, else Youden."""
    ops = d["operating_points"]
    return ops[0] if ops else None


def _validation_kind(d: dict) -> str:
    v = (d.get("population") or {}).get("validation")
    c = d.get("comparison") or {}
    if c.get("validation_b"):  # two models, each with its own relation to this cohort
        return f"{c['name_a']}: {c.get('validation_a') or v or NOT_RECORDED}; {c['name_b']}: {c['validation_b']}"
    if v and v != NOT_RECORDED:
        return v
    if d.get("cross_validation") and d["cross_validation"].get("folds"):
        return "internal (cross-validation, patient-grouped folds)"
    return NOT_RECORDED


def primary_auc(d: dict) -> tuple[dict, str]:
    """The AUC interval the report leads with (``settings.auc_interval``) and its name."""
    auc = d["auc"]
    if (d.get("settings") or {}).get("auc_interval", "logit") == "wald":
        return auc["delong"], "DeLong Wald"
    return auc.get("delong_logit") or auc["delong"], "DeLong logit"


def shift_text(shift: dict | None) -> str:
    if not shift:
        return "not computed"
    return ("FLAGGED: " if shift.get("flagged") else "not flagged: ") + str(shift.get("message") or "")


def comparison_conclusion(d: dict) -> str:
    """One sentence: which model did better on these images, whether the paired test shows it,
    and whether the cohort is unlike either model's training data."""
    c = d["comparison"]
    t = c["paired_delong"]
    a, b = c["name_a"], c["name_b"]
    alpha = (d.get("settings") or {}).get("alpha", 0.05)
    diff, p = t.get("diff"), t.get("p_value")
    if diff is None or p is None or diff != diff or p != p:
        text = f"The AUCs of {a} and {b} could not be compared on these images (paired test not estimable)."
    else:
        ci = f"difference {fmt_num(diff)}, {level(d)} CI {fmt_interval(t.get('low'), t.get('high'))}, {fmt_p(p)}"
        if p < alpha:
            text = f"{a} separates the classes {'better' if diff > 0 else 'worse'} than {b} on these {c['n']} images ({ci})."
        else:
            text = (
                f"No difference in AUC between {a} and {b} was shown on these {c['n']} images ({ci}); "
                "the study may be too small to show one."
            )
    flagged = [name for name, s in ((a, d.get("shift")), (b, c.get("shift_b"))) if s and s.get("flagged")]
    if flagged:
        text += f" The cohort is unlike the training data of {' and '.join(flagged)}."
    return text


def headline(d: dict) -> list[dict]:
    """The boxed summary: operating point, AUC, counts, validation type, warnings."""
    lv = level(d)
    op = primary_op(d)
    c = d["cohort"]
    pl = d.get("patient_level") or {}
    rows = []
    if op is not None:
        m = op["metrics"]
        where = {
            "model": f"at the threshold {(d.get('threshold_provenance') or {}).get('text', '')}",
            "folds": "at each fold's own threshold (chosen on that fold's training data)",
            "youden": "at the Youden threshold chosen on this cohort (optimistic: no threshold was fixed "
            "before this cohort)",
        }[op["name"]]
        for key in ("sensitivity", "specificity"):
            text = f"{fmt_prop(m[key])} {m[key].get('k', '')}/{m[key].get('n', '')}"
            p = pl.get(key) if pl.get("threshold") == op["threshold"] else None
            if p:
                text += f"; patient-level {fmt_interval(p['low'], p['high'], pct=True)}"
            rows.append((f"{key.capitalize()} ({lv} CI)", text))
        rows.insert(0, ("Operating point", where))
    main_auc, method = primary_auc(d)
    auc_text = fmt_auc(main_auc) + " " + method
    if pl.get("auc"):
        auc_text += f"; patient-level {fmt_interval(pl['auc']['low'], pl['auc']['high'])}"
    cmp_ = d.get("comparison")
    rows.append((f"AUC ({lv} CI)" + (f", {cmp_['name_a']}" if cmp_ else ""), auc_text))
    if cmp_:
        rows.append((f"AUC ({lv} CI), {cmp_['name_b']}", fmt_auc(cmp_["auc_b_delong"]) + " " + method))
        t = cmp_["paired_delong"]
        rows.append(
            (
                "Paired DeLong test (A \u2212 B)",
                f"{fmt_num(t['diff'])} {fmt_interval(t['low'], t['high'])}, {fmt_p(t['p_value'])} "
                f"({cmp_['n']} images scored by both)",
            )
        )
        rows.append(("Conclusion", comparison_conclusion(d)))
    counts = c["class_counts"]
    rows.append(
        (
            "Images / patients / positives",
            f"{c['n_images_evaluated']} / {c['n_patients'] if c.get('n_patients') is not None else NOT_RECORDED}"
            f" / {counts.get(d['positive_class'], 0)} ({d['positive_class']})"
            + (f"; {c['n_rejected']} not evaluated" if c.get("n_rejected") else ""),
        )
    )
    rows.append(("Validation", _validation_kind(d)))
    scoring = c.get("scoring") or {}
    if scoring.get("int8"):  # predict --allow-int8 chose the bundle's verified int8 variant
        v = scoring.get("int8_variant") or {}
        rows.append(
            (
                "Scored with",
                f"{scoring.get('runtime')}: the int8 variant (--allow-int8), verified on the validation split: "
                f"AUC change {fmt_num(v.get('auc_change'), 4)}, {v.get('decisions_changed', '?')} decision(s) "
                f"changed, max probability change {fmt_num(v.get('prob_change_max'), 4)}",
            )
        )
    elif scoring:
        rows.append(("Scored with", str(scoring.get("runtime"))))
    if cmp_:
        rows.append((f"Cohort shift check, {cmp_['name_a']}", shift_text(d.get("shift"))))
        rows.append((f"Cohort shift check, {cmp_['name_b']}", shift_text(cmp_.get("shift_b"))))
    else:
        rows.append(("Cohort shift check", shift_text(d.get("shift"))))
    return [
        {
            "kind": "headline",
            "title": "Summary",
            "rows": [[k, v] for k, v in rows],
            "warnings": list(d.get("warnings") or []),
        }
    ]


def population(d: dict) -> list[dict]:
    p = d.get("population") or {}
    rows = [(name, p.get(key, NOT_RECORDED)) for key, name in POPULATION_ITEMS]
    rows += [
        ("Ingest rules that applied", p.get("ingest_rules", NOT_RECORDED)),
        ("Patient sex missing", p.get("sex_missing", NOT_RECORDED)),
        ("Patient age missing", p.get("age_missing", NOT_RECORDED)),
    ]
    return [
        {
            "kind": "paragraph",
            "text": "Who was tested and against what truth. Items the inputs do not record "
            "are shown as 'not recorded' (give them in the workflow's cohort: block or with --cohort-info).",
        },
        kv(rows, "Population and reference standard"),
    ]


def model_description(d: dict) -> list[dict]:
    md = d.get("model_description")
    if not md:
        return [{"kind": "note", "text": "No model bundle was given, so the model cannot be described."}]
    op = primary_op(d)
    test_auc = fmt_auc(primary_auc(d)[0])
    rows = [
        ("Architecture", md["architecture"]),
        ("Initialisation", md["initialisation"]),
        ("Input size and aspect", md["input"]),
        ("Intensity preprocessing", md["preprocessing"]),
        ("Augmentation", md["augmentation"]),
        ("Training images", md["n_train"]),
        ("Validation images", md["n_validation"]),
        ("Split", md["split"]),
        ("Epochs run / best epoch", f"{md['epochs']} / {md['best_epoch']}"),
        (
            "Performance: validation AUC beside this cohort's AUC",
            f"{md['validation_auc']} (validation) | {test_auc} (this cohort)",
        ),
        ("Model card", Path(md["model_card"]).as_uri() if md.get("model_card") else "not available"),
    ]
    blocks = [kv(rows, "Model description")]
    if op is None:
        blocks.append({"kind": "note", "text": "No operating point could be evaluated on this cohort."})
    return blocks


def shift(d: dict) -> list[dict]:
    s = d.get("shift")
    if not s:
        return [
            {"kind": "paragraph", "text": "Cohort shift (out-of-distribution) check: not computed for this report."}
        ]
    rows = [
        ("Result", "FLAGGED" if s.get("flagged") else "not flagged"),
        ("Cohort shift score / threshold", f"{fmt_num(s.get('cohort_score'))} / {fmt_num(s.get('threshold'))}"),
        (
            "Images flagged",
            f"{s.get('n_flagged', '?')} of {s.get('n_images', '?')} ({fmt_pct(s.get('fraction_flagged'))})",
        ),
    ]
    blocks = [kv(rows, "Cohort shift check")]
    if s.get("message"):
        blocks.insert(0, {"kind": "note" if s.get("flagged") else "paragraph", "text": str(s["message"])})
    return blocks


def patient_level(d: dict) -> list[dict]:
    pl = d.get("patient_level")
    lv = level(d)
    if not pl:
        return [
            {
                "kind": "paragraph",
                "text": "Patient-level intervals: not computed (the predictions carry no "
                "patient IDs). " + PRIMARY_CI_TEXT,
            }
        ]
    op = primary_op(d)
    rows = [
        ("Patients / images", f"{pl['n_patients']} / {pl['n_images']}"),
        (
            f"AUC: image-level DeLong logit | patient-level {lv} CI",
            f"{fmt_auc(d['auc'].get('delong_logit'))} | {fmt_interval(pl['auc']['low'], pl['auc']['high'])}",
        ),
    ]
    if op is not None and pl.get("threshold") == op["threshold"] and pl.get("sensitivity"):
        for key in ("sensitivity", "specificity"):
            m = op["metrics"][key]
            rows.append(
                (
                    f"{key.capitalize()}: image-level Wilson | patient-level {lv} CI",
                    f"{fmt_prop(m)} | {fmt_interval(pl[key]['low'], pl[key]['high'], pct=True)}",
                )
            )
    return [
        {"kind": "paragraph", "text": PRIMARY_CI_TEXT},
        kv(rows, f"Image-level and patient-level intervals ({pl['n_resamples']} patient resamples, seed {pl['seed']})"),
    ]


def utility(d: dict) -> list[dict]:
    u = d.get("utility") or {}
    lv = level(d)
    pr = u.get("precision_recall") or {}
    blocks: list[dict] = [
        {
            "kind": "figrow",
            "items": [
                {
                    "file": "decision_curve.svg",
                    "caption": "Decision curve: net benefit of acting on the model's call at "
                    "each threshold probability, against treating everyone and no one.",
                },
                {
                    "file": "precision_recall.svg",
                    "caption": f"Precision-recall curve; AUPRC {fmt_num(pr.get('auprc'))} "
                    f"(cohort prevalence {fmt_num(pr.get('prevalence'), 2)}).",
                },
            ],
        }
    ]
    pv = u.get("predictive_values") or []
    if pv:
        rows = [[fmt_pct(v["prevalence"]), fmt_prop(v["ppv"]), fmt_prop(v["npv"])] for v in pv]
        blocks.append(
            table(
                ["Prevalence", f"PPV ({lv} CI)", f"NPV ({lv} CI)"],
                rows,
                "PPV and NPV at other prevalences (sensitivity and specificity of the fixed operating "
                "point; logit intervals, Mercaldo 2007)",
                [1, 2, 2],
            )
        )
    else:
        blocks.append(
            {
                "kind": "paragraph",
                "text": "PPV/NPV at other prevalences: " + NOT_ESTIMABLE + " (no fixed operating point).",
            }
        )
    return blocks


def failures(d: dict) -> list[dict]:
    f = d.get("failures") or {}
    cases = f.get("cases") or []
    if f.get("threshold") is None:
        return [
            {
                "kind": "paragraph",
                "text": "Failure analysis: no fixed operating point, so no image is misclassified by a pre-set rule.",
            }
        ]
    if not cases:
        return [
            {"kind": "paragraph", "text": f"No image is misclassified at threshold {fmt_threshold(f['threshold'])}."}
        ]
    extra = [c for c in ("view_position", "patient_sex", "age_band", "manufacturer", "shift_flag") if c in cases[0]]
    names = {
        "view_position": "View",
        "patient_sex": "Sex",
        "age_band": "Age band",
        "manufacturer": "Manufacturer",
        "shift_flag": "Shift flag",
    }
    rows = [
        [f"#{c['image_index']}", c["error"], c["label"], fmt_num(c["score"])] + [str(c[k]) for k in extra]
        for c in cases
    ]
    return [
        table(
            ["Image", "Error", "True label", "Score"] + [names[k] for k in extra],
            rows,
            f"Every misclassified image at threshold {fmt_threshold(f['threshold'])} ({len(cases)} images; "
            "image numbers are rows of predictions.csv)",
            [0.8, 1.4, 1.2, 0.8] + [1.0] * len(extra),
        )
    ]
