"""The reporting-checklist appendix: CLAIM 2024 and TRIPOD+AI 2024 items mapped to the section
of this report that answers them, or marked "not recorded" / "not applicable".

References:
    Tejani AS, Klontzas ME, Gatti AA, et al. (2024). Checklist for Artificial Intelligence in
    Medical Imaging (CLAIM): 2024 update. Radiology: Artificial Intelligence 6(4):e240300.
    Collins GS, Moons KGM, Dhiman P, et al. (2024). TRIPOD+AI statement: updated guidance for
    reporting clinical prediction models that use regression or machine learning methods.
    BMJ 385:e078378.

Item numbers follow the published checklists; topics are abridged. An item whose answer
depends on a recorded value (data source, reference standard, ...) is "not recorded" when
the inputs did not give it, never silently mapped to a section.
"""

from __future__ import annotations

from collections.abc import Callable

from cxr_cad.report.clinical import NOT_RECORDED

NA = "not applicable"


def _pop(key: str) -> Callable[[dict], bool]:
    return lambda d: (d.get("population") or {}).get(key, NOT_RECORDED) != NOT_RECORDED


def _has(key: str) -> Callable[[dict], bool]:
    return lambda d: bool(d.get(key))


_ALWAYS: Callable[[dict], bool] = lambda d: True  # noqa: E731
_NEVER: Callable[[dict], bool] = lambda d: False  # noqa: E731

#: (checklist, item, topic, section id, answered?) -- section None = not applicable
ITEMS: tuple[tuple[str, str, str, str | None, Callable[[dict], bool]], ...] = (
    ("CLAIM", "1", "Title identifies an AI method and the task", "summary", _ALWAYS),
    ("CLAIM", "2", "Structured summary of design, methods, results", "summary", _ALWAYS),
    ("CLAIM", "3", "Clinical background and intended use", "header", _ALWAYS),
    ("CLAIM", "5", "Study design (retrospective / prospective)", "population", _pop("design")),
    ("CLAIM", "7", "Data sources", "population", _pop("source")),
    ("CLAIM", "8", "Eligibility criteria", "population", _pop("eligibility")),
    ("CLAIM", "9", "Data pre-processing", "model", _has("model_description")),
    ("CLAIM", "10", "Selection of data subsets (exclusions by reason)", "cohort", _ALWAYS),
    ("CLAIM", "11", "De-identification", "methods", _ALWAYS),
    ("CLAIM", "12", "Handling of missing data", "population", _ALWAYS),
    ("CLAIM", "14", "Definition of the reference standard", "population", _pop("reference_standard")),
    ("CLAIM", "16", "Source and qualifications of annotators", "population", _pop("reference_standard")),
    ("CLAIM", "17", "Inter- and intra-rater variability of annotations", None, _NEVER),
    (
        "CLAIM",
        "19",
        "How data were assigned to partitions; disjoint at patient level",
        "model",
        _has("model_description"),
    ),
    ("CLAIM", "20", "Model architecture", "model", _has("model_description")),
    ("CLAIM", "21", "Software libraries and versions", "header", _ALWAYS),
    ("CLAIM", "22", "Initialisation of model parameters", "model", _has("model_description")),
    ("CLAIM", "23", "Training details (augmentation, epochs, model selection)", "model", _has("model_description")),
    ("CLAIM", "25", "Ensembling", None, _NEVER),
    ("CLAIM", "26", "Metrics of model performance", "study", _ALWAYS),
    ("CLAIM", "27", "Statistical measures of uncertainty", "methods", _ALWAYS),
    ("CLAIM", "28", "Robustness or sensitivity analysis (patient-level CIs, subgroups)", "subgroups", _ALWAYS),
    ("CLAIM", "29", "Methods for explainability", "explanations", _ALWAYS),
    (
        "CLAIM",
        "30",
        "Internal or external testing",
        "summary",
        lambda d: (
            (d.get("population") or {}).get("validation", NOT_RECORDED) != NOT_RECORDED
            or bool((d.get("cross_validation") or {}).get("folds"))
        ),
    ),
    ("CLAIM", "31", "Flow of participants or cases", "cohort", _ALWAYS),
    ("CLAIM", "32", "Demographic and clinical characteristics", "cohort", _ALWAYS),
    ("CLAIM", "33", "Performance estimates with uncertainty", "study", _ALWAYS),
    ("CLAIM", "34", "Failure analysis of incorrectly classified cases", "failures", _ALWAYS),
    ("CLAIM", "36", "Limitations, biases, generalisability", "header", _ALWAYS),
    ("CLAIM", "37", "Implications for practice (clinical utility)", "utility", _ALWAYS),
    ("CLAIM", "40", "Registration and protocol", None, _NEVER),
    ("TRIPOD+AI", "5", "Data sources and dates", "population", lambda d: _pop("source")(d) and _pop("dates")(d)),
    ("TRIPOD+AI", "6", "Setting and eligibility of participants", "population", _pop("site")),
    ("TRIPOD+AI", "7", "Data preparation and quality checks", "population", _pop("ingest_rules")),
    ("TRIPOD+AI", "8", "Outcome and how it was assessed", "population", _pop("reference_standard")),
    ("TRIPOD+AI", "9", "Predictors (input images and preprocessing)", "model", _has("model_description")),
    ("TRIPOD+AI", "10", "Sample size", "summary", _ALWAYS),
    ("TRIPOD+AI", "11", "Missing data", "population", _ALWAYS),
    ("TRIPOD+AI", "12", "Model type, building and internal validation", "model", _has("model_description")),
    ("TRIPOD+AI", "12e", "Performance measures: discrimination, calibration, clinical utility", "utility", _ALWAYS),
    ("TRIPOD+AI", "14", "Fairness: performance in subgroups", "subgroups", _ALWAYS),
    ("TRIPOD+AI", "15", "Model output and decision threshold", "study", _ALWAYS),
    ("TRIPOD+AI", "16", "Differences between development and evaluation data", "shift", _has("shift")),
    ("TRIPOD+AI", "20", "Participant flow and characteristics", "cohort", _ALWAYS),
    ("TRIPOD+AI", "23", "Model performance with CIs, including calibration", "calibration", _ALWAYS),
    ("TRIPOD+AI", "24", "Model updating", None, _NEVER),
    ("TRIPOD+AI", "27", "Interpretation and limitations", "header", _ALWAYS),
)


def checklist_rows(d: dict, sections: dict[str, tuple[int, str]]) -> list[list[str]]:
    """Rows ``[checklist, item, topic, where answered]``; ``sections`` maps section id to
    (number, title) of the document being built."""
    rows = []
    for checklist, item, topic, sec, answered in ITEMS:
        if sec is None:
            where = NA if item in ("25", "24") else NOT_RECORDED
        elif sec not in sections:
            where = NOT_RECORDED if sec in ("shift",) else NA
        elif not answered(d):
            where = f"{NOT_RECORDED} (section {sections[sec][0]} shows what is known)"
        else:
            where = f"section {sections[sec][0]}: {sections[sec][1]}"
        rows.append([checklist, item, topic, where])
    return rows


def checklist_blocks(d: dict, sections: dict[str, tuple[int, str]]) -> list[dict]:
    rows = checklist_rows(d, sections)
    return [
        {
            "kind": "paragraph",
            "text": "Each reporting item of CLAIM 2024 (Checklist for Artificial Intelligence "
            "in Medical Imaging; Tejani et al. 2024) and TRIPOD+AI 2024 (Collins et al. 2024) that this kind of "
            "evaluation can answer, with the section that answers it; items the inputs did not record say "
            "so. Topics are abridged; item numbers follow the published checklists.",
        },
        {
            "kind": "table",
            "caption": "Reporting checklist (CLAIM 2024, TRIPOD+AI 2024)",
            "columns": ["Checklist", "Item", "Topic", "Where answered"],
            "rows": rows,
            "widths": [1.1, 0.6, 3.2, 2.6],
            "left": True,
        },
    ]
