"""Turn ``metrics.json`` data into one document model that both renderers draw.

The HTML and the PDF are drawn from the same list of sections and blocks, and every
number in them is formatted here, once, from the values in ``metrics.json``, so the
three files always show the same numbers. Block kinds: ``paragraph``, ``note``
(highlighted), ``kv`` (two-column table), ``table``, ``figure``, ``figrow`` (figures side by
side), ``gallery``, ``headline`` (the boxed summary that opens the report). Every interval
label names the report's confidence level (``level(d)``, e.g. "90% CI").
"""

from __future__ import annotations

from cxr_cad.core.columns import SUBGROUP_COLUMNS
from cxr_cad.report import view_clinical as vc
from cxr_cad.report import view_performance as vp
from cxr_cad.report.checklist import checklist_blocks
from cxr_cad.report.fmt import (
    NOT_ESTIMABLE,
    category_key,
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
from cxr_cad.report.text import INTENDED_USE, LIMITATIONS, methods_paragraphs
from cxr_cad.report.view_calibration import calibration

__all__ = ["build_document"]


def _header(d: dict) -> list[dict]:
    m, c = d.get("model") or {}, d["cohort"]
    blocks = []
    if m.get("identified_by"):
        blocks.append(
            kv(
                [
                    ("Model", str(m.get("name"))),
                    ("Model SHA-256", str(m.get("sha256", "not recorded"))),
                    ("Identified by", str(m["identified_by"])),
                    (
                        "Classes (positive class)",
                        f"{', '.join(map(str, m.get('classes') or [])) or 'not recorded'} ({d['positive_class']})",
                    ),
                    (
                        "Decision threshold used",
                        (d.get("threshold_provenance") or {}).get("text") or fmt_threshold(m.get("threshold")),
                    ),
                ],
                "Model",
            )
        )
    elif m:
        thr = m.get("threshold")
        blocks.append(
            kv(
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
        kv(
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
    blocks.append(kv([("Software versions", ", ".join(f"{k} {v}" for k, v in sw.items()))], "Software"))
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
    blocks = [kv(rows, "Images and patients")]
    if c["rejected_by_reason"]:
        blocks.append(
            table(
                ["Rejection reason", "Images"],
                [[k, str(v)] for k, v in c["rejected_by_reason"].items()],
                "Images not evaluated, by reason code",
                [3, 1],
            )
        )
    n = max(c["n_images_evaluated"], 1)
    for col, counts in c.get("distributions", {}).items():
        blocks.append(
            table(
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


def _subgroups(d: dict) -> list[dict]:
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
            table(
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
    lv, method = level(d), vc.primary_auc(d)[1]
    return [
        {"kind": "paragraph", "text": vc.comparison_conclusion(d)},
        {"kind": "figure", "file": "comparison_roc.svg", "caption": "ROC curves of both models on the same images."},
        kv(
            [
                (f"AUC ({lv} CI, {method}), {c['name_a']}", fmt_auc(c["auc_a_delong"])),
                (f"AUC ({lv} CI, {method}), {c['name_b']}", fmt_auc(c["auc_b_delong"])),
                (f"Model SHA-256, {c['name_b']}", str(c.get("sha256_b") or "not recorded")),
                (f"Cohort shift check, {c['name_a']}", vc.shift_text(d.get("shift"))),
                (f"Cohort shift check, {c['name_b']}", vc.shift_text(c.get("shift_b"))),
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
    study = vp.study_table(d) + vc.patient_level(d)
    sections = [
        ("summary", "Summary", vc.headline(d)),
        ("header", "Model, cohort and intended use", _header(d)),
        ("population", "Population and reference standard", vc.population(d)),
        ("model", "Model description", vc.model_description(d)),
        ("cohort", "Cohort summary", _cohort(d)),
        ("shift", "Cohort shift", vc.shift(d)),
        ("study", "Diagnostic performance (the study's table)", study),
        ("roc", "ROC analysis", vp.roc(d)),
        ("utility", "Clinical utility", vc.utility(d)),
        ("calibration", "Calibration", calibration(d)),
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
    name = str(m.get("name", "(not given)"))
    sha = str(m.get("sha256") or "")[:12]
    if sha and sha not in name:
        name += f" ({sha})"
    sub = f"Model {name} on cohort {d['cohort'].get('name') or '(unnamed)'}"
    return {
        "title": title,
        "subtitle": sub,
        "sections": [{"id": i, "number": n + 1, "title": t, "blocks": b} for n, (i, t, b) in enumerate(sections)],
    }
