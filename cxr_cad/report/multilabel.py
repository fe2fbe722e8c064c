"""The multi-label report: a findings overview (one row per finding: prevalence, AUC with its
DeLong CI, sensitivity and specificity at the finding's threshold, small-sample flag), then
one section per finding, label co-occurrence, methods and the CLAIM / TRIPOD+AI appendix.

Input: the summary of :func:`cxr_cad.metrics.multilabel.multilabel_summary` (``cv_metrics.json``
of a multi-label cross-validation, or an evaluation). Output: ``report.html`` (self-contained),
``report.pdf`` and ``metrics.json``, drawn from one document model by the same renderers as
the binary report (:mod:`cxr_cad.report.html`, :mod:`cxr_cad.report.pdf`). Computes no
statistics of its own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cxr_cad.core.atomic import atomic_write_text
from cxr_cad.metrics import jsonable
from cxr_cad.report.checklist import checklist_blocks
from cxr_cad.report.clinical import NOT_RECORDED
from cxr_cad.report.fmt import NOT_ESTIMABLE, fmt_interval, fmt_num, fmt_pct, fmt_prop, kv, table
from cxr_cad.report.html import render_html
from cxr_cad.report.pdf import render_pdf

__all__ = ["build_multilabel_document", "write_multilabel_report"]

FLAG_TEXT = "too few cases: not reported"


def _auc_text(row: Mapping[str, Any]) -> str:
    if row.get("small_sample"):
        return FLAG_TEXT
    auc = row.get("auc")
    if not isinstance(auc, (int, float)) or auc != auc:
        return NOT_ESTIMABLE
    return f"{auc:.3f} {fmt_interval(row.get('auc_low'), row.get('auc_high'))}"


def _overview(d: Mapping[str, Any]) -> list[dict]:
    rows = []
    for r in d["per_finding"]:
        flagged = bool(r["small_sample"])
        rows.append(
            [
                r["finding"],
                f"{r['n_positive']} / {r['n']} ({fmt_pct(r['prevalence'])})",
                _auc_text(r),
                FLAG_TEXT if flagged else fmt_prop(r.get("sensitivity")),
                FLAG_TEXT if flagged else fmt_prop(r.get("specificity")),
                fmt_num(r["threshold"], 3),
                "yes" if flagged else "no",
            ]
        )
    level = f"{100 * (1 - d.get('alpha', 0.05)):g}%"
    macro, micro = d["macro"], d["micro"]
    blocks = [
        table(
            [
                "Finding",
                "Positives / known (prevalence)",
                f"AUC ({level} CI, DeLong)",
                f"Sensitivity ({level} CI)",
                f"Specificity ({level} CI)",
                "Threshold",
                "Small sample",
            ],
            rows,
            "Findings overview",
            [1.4, 1.5, 1.6, 1.6, 1.6, 0.9, 0.7],
        ),
        kv(
            [
                (
                    "Macro-average AUC (reported findings)",
                    f"{fmt_num(macro['auc'], 3)} (SD {fmt_num(macro['auc_sd'], 3)}, {macro['n_findings']} findings)",
                ),
                (
                    f"Micro-average AUC ({level} CI, pooled image-finding pairs)",
                    _auc_text({**micro, "small_sample": False}),
                ),
                ("Micro-average sensitivity", fmt_prop(micro.get("sensitivity"))),
                ("Micro-average specificity", fmt_prop(micro.get("specificity"))),
                ("Findings flagged (not reported)", ", ".join(d["flagged"]) or "none"),
            ],
            "Averages over findings",
        ),
    ]
    if d["flagged"]:
        blocks.append(
            {
                "kind": "note",
                "text": f"Findings with fewer than {d['min_positives']} positive or negative images are flagged and "
                "their AUC, sensitivity and specificity are not reported: "
                + ", ".join(d["flagged"])
                + ". They are left out of both averages.",
            }
        )
    return blocks


def _finding_blocks(r: Mapping[str, Any], level: str) -> list[dict]:
    boot = r.get("cluster_bootstrap") or {}
    rows = [
        ("Known labels (unknown / masked)", f"{r['n']} ({r['n_unknown']})"),
        ("Positive / negative images", f"{r['n_positive']} / {r['n_negative']}"),
        (f"AUC ({level} CI, DeLong, logit)", _auc_text(r)),
        ("Threshold", fmt_num(r["threshold"], 4) + (f" ({r['threshold_note']})" if r.get("threshold_note") else "")),
        (f"Sensitivity ({level} Wilson CI)", FLAG_TEXT if r["small_sample"] else fmt_prop(r.get("sensitivity"))),
        (f"Specificity ({level} Wilson CI)", FLAG_TEXT if r["small_sample"] else fmt_prop(r.get("specificity"))),
        ("Positive calls", str(r.get("positive_calls", NOT_ESTIMABLE))),
    ]
    if boot:
        auc_b = boot.get("auc") or {}
        rows.append(
            (
                f"AUC, patient-cluster bootstrap {level} CI ({boot.get('n_resamples')} resamples)",
                fmt_interval(auc_b.get("low"), auc_b.get("high")),
            )
        )
    return [kv(rows, r["finding"])]


def _cooccurrence(d: Mapping[str, Any]) -> list[dict]:
    c = d["cooccurrence"]
    names, counts = c["findings"], c["counts"]
    pairs = sorted(
        ((counts[i][j], names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))),
        reverse=True,
    )
    top = [[a, b, str(n)] for n, a, b in pairs[:15] if n > 0]
    by = [[k, str(v)] for k, v in c["n_images_by_count"].items()]
    return [
        table(["Finding", "Finding", "Images with both"], top, "Most frequent pairs of findings (top 15)", [2, 2, 1]),
        table(["Findings per image", "Images"], by, "Images by number of present findings", [1, 1]),
    ]


def _gradcam_blocks(d: Mapping[str, Any]) -> list[dict]:
    """The note and one gallery per finding with positive calls (``d["gradcam"]``, written by
    :func:`cxr_cad.explain.gradcam.write_finding_gallery`), or the note why there is none."""
    g = d.get("gradcam") or {}
    if not g.get("cases"):
        text = g.get("note") or "Per-finding Grad-CAM needs the model and the images (evaluate with --model)."
        return [{"kind": "note", "text": text}]
    blocks: list[dict] = [{"kind": "paragraph", "text": g.get("note", "")}]
    for name in dict.fromkeys(c["finding"] for c in g["cases"]):
        items = [{"file": c["file"], "caption": c["caption"]} for c in g["cases"] if c["finding"] == name]
        blocks.append({"kind": "gallery", "items": items})
    return blocks


def _methods(d: Mapping[str, Any]) -> list[dict]:
    texts = [
        "Task: multi-label classification, one sigmoid output per finding, trained with binary cross-entropy "
        "(per-finding positive weights n_negative/n_positive); labels recorded as unknown (blank, or uncertain "
        f"under the '{d.get('uncertain', 'ignore')}' policy) are masked out of the loss and of every statistic "
        "of that finding.",
        f"Model selection: {d.get('selection', NOT_RECORDED)}. Each finding's decision threshold is chosen on "
        "the inner validation split by the configured policy and stored in the bundle with its provenance.",
        "AUC: Mann-Whitney estimate with the DeLong (1988) variance and a logit-scale interval; sensitivity "
        "and specificity with Wilson intervals; the patient-cluster bootstrap resamples patients with "
        "replacement. Macro average: mean of the reported findings' AUCs; micro average: one AUC over every "
        "known (image, finding) pair of the reported findings.",
        f"Findings with fewer than {d['min_positives']} positive or negative images are flagged and not "
        "reported as numbers.",
    ]
    if d.get("fold_method"):
        texts.append(
            f"Cross-validation: {d.get('n_folds')} folds, {d['fold_method']}; every image scored once by the "
            "model that never saw its patient, at that fold model's thresholds."
        )
    return [{"kind": "paragraph", "text": t} for t in texts]


def build_multilabel_document(d: Mapping[str, Any], *, per_finding: bool = True, cohort_name: str = "") -> dict:
    """The document model (sections of blocks) of a multi-label summary ``d``."""
    level = f"{100 * (1 - d.get('alpha', 0.05)):g}%"
    reported = d["macro"]["n_findings"]
    summary = [
        kv(
            [
                ("Images", str(d["n_images"])),
                ("Findings", f"{len(d['per_finding'])} ({reported} reported, {len(d['flagged'])} flagged)"),
                ("Macro-average AUC", fmt_num(d["macro"]["auc"], 3)),
                ("Micro-average AUC", _auc_text({**d["micro"], "small_sample": False})),
            ],
            "Summary",
        ),
        {
            "kind": "note",
            "text": "Small cohorts give wide intervals: read each AUC with its CI, and do not claim accuracy for "
            "a finding from a handful of positive images.",
        },
    ]
    header = [
        kv(
            [
                ("Task", "multi-label (one probability and one decision per finding)"),
                ("Findings (output order)", ", ".join(r["finding"] for r in d["per_finding"])),
                ("Uncertain labels", str(d.get("uncertain", NOT_RECORDED))),
                *([("Model", str(d["model"]))] if d.get("model") else []),
                *([("Thresholds", str(d["threshold_source"]))] if d.get("threshold_source") else []),
                ("Intended use", "research and development; not for clinical decisions"),
            ],
            "Model and task",
        )
    ]
    facts = [("Images", str(d["n_images"])), ("Folds", str(d.get("n_folds", "-")))]
    if d.get("rejected_by_reason") is not None:
        why = ", ".join(f"{k} {v}" for k, v in d["rejected_by_reason"].items())
        facts.append(("Files not evaluated", f"{d.get('n_rejected', 0)}" + (f" ({why})" if why else "")))
    if d.get("label_note"):
        facts.append(("Labels", str(d["label_note"])))
    cohort = [kv(facts, "Cohort")]
    cohort += _cooccurrence(d)
    sections: list[tuple[str, str, list[dict]]] = [
        ("summary", "Summary", summary),
        ("header", "Model, task and intended use", header),
        ("cohort", "Cohort and label co-occurrence", cohort),
        ("study", "Findings overview", _overview(d)),
    ]
    if per_finding:
        blocks: list[dict] = []
        for r in d["per_finding"]:
            blocks += _finding_blocks(r, level)
        sections.append(("findings", "Per-finding results", blocks))
    sections.append(("explanations", "Explanations (Grad-CAM)", _gradcam_blocks(d)))
    sections.append(("methods", "Methods", _methods(d)))
    numbers = {sid: (n + 1, title) for n, (sid, title, _) in enumerate(sections)}
    check = {"population": {}, "cross_validation": {"folds": d.get("folds")}}
    sections.append(
        ("checklist", "Appendix: CLAIM 2024 and TRIPOD+AI 2024 checklist", checklist_blocks(check, numbers))
    )
    return {
        "title": "Chest radiograph CAD: multi-label evaluation report",
        "subtitle": f"Cohort {cohort_name or '(unnamed)'}; {len(d['per_finding'])} findings",
        "sections": [{"id": i, "number": n + 1, "title": t, "blocks": b} for n, (i, t, b) in enumerate(sections)],
    }


def write_multilabel_report(
    summary: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    pdf: bool = True,
    per_finding: bool = True,
    cohort_name: str = "",
    images: Mapping[str, Path] | None = None,
) -> dict[str, Path]:
    """Write ``metrics.json``, ``report.html`` and (``pdf``) ``report.pdf`` into ``out_dir``;
    returns their paths by name. ``images``: the Grad-CAM pictures ``summary["gradcam"]`` names,
    by file name. Raises OutputError when a file cannot be written (or a named picture is missing)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = build_multilabel_document(summary, per_finding=per_finding, cohort_name=cohort_name)
    paths = {"metrics": out / "metrics.json", "html": out / "report.html"}
    atomic_write_text(paths["metrics"], json.dumps(jsonable(dict(summary)), indent=2) + "\n")
    pictures = dict(images or {})
    atomic_write_text(paths["html"], render_html(doc, pictures))
    if pdf:
        paths["pdf"] = render_pdf(doc, pictures, out / "report.pdf")
    return paths
