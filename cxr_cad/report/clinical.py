"""The clinical-reviewer parts of ``metrics.json``: threshold provenance, population and
reference standard, model description, patient-level intervals, clinical utility, the
failure list and the warnings a reader must see (small samples, zero-width or clipped
intervals, duplicated rows).

Statistics come from :mod:`cxr_cad.metrics`; this module selects inputs and words.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from cxr_cad import metrics
from cxr_cad.config.transforms import AugmentSpec
from cxr_cad.metrics.cluster import calibration_bootstrap, cluster_bootstrap
from cxr_cad.metrics.utility import calibration_slope_intercept, decision_curve, precision_recall, predictive_values
from cxr_cad.report.fmt import finite_or_none, fmt_threshold

NOT_RECORDED = "not recorded"
#: how each source of the threshold is named (never "stored"/"chosen before" unless it was)
THRESHOLD_SOURCES = {
    "bundle": "stored in the model bundle, fixed before this cohort",
    "command line": "given on the command line",
    "predictions table": "as recorded in the predictions table",
    "caller": "given by the caller",
}
_METHOD_WORDS = {
    "youden": "maximised Youden's J",
    "fixed": "fixed value",
    "sensitivity": "highest threshold reaching the target sensitivity",
    "midpoint": "halfway (log-odds) between the two classes' median validation scores",
    "calibrated": "cut-off on the calibrated probability",
    "specificity": "lowest threshold reaching the target specificity",
}
#: items of the population block, in order, with their display names
POPULATION_ITEMS = (
    ("source", "Data source"),
    ("site", "Site"),
    ("dates", "Dates"),
    ("design", "Study design (retrospective / prospective)"),
    ("population", "Population"),
    ("eligibility", "Eligibility"),
    ("reference_standard", "Reference standard (how labels were made)"),
    ("validation", "Validation type"),
)


def _thr(x: float) -> str:
    return fmt_threshold(float(x))


def threshold_provenance(
    threshold: float | None, source: str | None, method: str | None, model_info: Mapping[str, Any] | None
) -> dict:
    """Where the reported threshold came from, in words, e.g. ``0.9317, maximised Youden's J
    on 14 validation images (7 positive), tie range 0.635–0.932; stored in the model bundle,
    fixed before this cohort``. A command-line threshold is never called stored or pre-fixed."""
    if threshold is None:
        return {
            "source": None,
            "text": "No decision threshold was fixed before this cohort; only the "
            "optimistic Youden threshold chosen on this cohort is reported.",
        }
    info = dict(model_info or {})
    src = source or "caller"
    out: dict[str, Any] = {"source": src, "threshold": float(threshold)}
    if src != "bundle":
        how = (
            f"; how it was chosen: {method}"
            if method and method not in ("given on the command line", "as recorded in the predictions table")
            else "; how it was chosen is not recorded"
        )
        out["text"] = f"{_thr(threshold)}, {THRESHOLD_SOURCES.get(src, src)}{how}"
        bundle_thr = finite_or_none(info.get("threshold_bundle"))
        if bundle_thr is not None and abs(bundle_thr - float(threshold)) > 1e-12:
            out["text"] += f" (the bundle's own threshold, {_thr(bundle_thr)}, is not used)"
        return out
    sel = dict(info.get("threshold_selection") or {})
    name = str(sel.get("method") or method or "").lower()
    words = _METHOD_WORDS.get(name, name or "method not recorded")
    params = sel.get("params") or {}
    if params.get("target") is not None:
        words += f" {float(params['target']):.2f}"
    chosen = sel.get("chosen_on")
    on: dict[str, Any] = chosen if isinstance(chosen, dict) else {}
    n = sel.get("n_val", on.get("n"))
    n_pos = sel.get("n_val_pos", on.get("n_positive"))
    n_neg = sel.get("n_val_neg", on.get("n_negative"))
    where = ""
    total = n if n is not None else int(n_pos) + int(n_neg) if n_pos is not None and n_neg is not None else None
    if total is not None:
        where = f" on {total} validation images" + (f" ({n_pos} positive)" if n_pos is not None else "")
    elif name != "fixed":
        where = " on validation data of unrecorded size"
    tie = sel.get("tie_range") or params.get("tie_range")  # engine.train keeps it under params
    tie_txt = ""
    if isinstance(tie, (list, tuple)) and len(tie) == 2 and None not in tie and tie[0] != tie[1]:
        tie_txt = f", tie range {float(tie[0]):.3f}\u2013{float(tie[1]):.3f}"
        out["tie_range"] = [float(tie[0]), float(tie[1])]
    out.update(method=name or None, n_validation=n, n_validation_positive=n_pos)
    if on.get("warning"):
        out["warning"] = f"Threshold chosen on a small validation set: {on['warning']}"
    out["text"] = f"{_thr(threshold)}, {words}{where}{tie_txt}; {THRESHOLD_SOURCES['bundle']}"
    return out


def _missing_count(ev: pd.DataFrame, col: str) -> int:
    if col not in ev.columns:
        return len(ev)
    v = ev[col].astype("string").fillna("").str.strip()
    return int(v.isin(("", "unknown", "nan", "<NA>", "None")).sum())


def population(ev: pd.DataFrame, cohort_info: Mapping[str, Any] | None) -> dict:
    """Population and reference standard: each item's recorded text or ``not recorded``,
    plus how many images lack sex and age (from the image headers)."""
    info = dict(cohort_info or {})
    items = {key: (str(info[key]) if info.get(key) not in (None, "") else NOT_RECORDED) for key, _ in POPULATION_ITEMS}
    if info.get("ingest_rules"):
        items["ingest_rules"] = str(info["ingest_rules"])
    else:
        items["ingest_rules"] = NOT_RECORDED
    n = len(ev)
    missing = {
        "patient_sex": _missing_count(ev, "patient_sex"),
        "age": min(_missing_count(ev, "patient_age_years"), _missing_count(ev, "patient_age")),
    }
    items["sex_missing"] = f"{missing['patient_sex']}/{n} images"
    items["age_missing"] = f"{missing['age']}/{n} images"
    return items


def ingest_rules_text(ingest: Mapping[str, Any] | None, policy: Mapping[str, Any] | None = None) -> str | None:
    """One line describing the ingest rules (accepted modalities, lateral views, VOI) and counts."""
    parts = []
    pol = dict(policy or {})
    if pol.get("modalities"):
        parts.append("modalities " + ", ".join(map(str, pol["modalities"])))
    if "reject_lateral" in pol:
        parts.append("lateral views rejected" if pol["reject_lateral"] else "lateral views accepted")
    if "apply_voi" in pol:
        parts.append("VOI LUT applied" if pol["apply_voi"] else "VOI LUT not applied")
    c = (ingest or {}).get("counts") or {}
    if c:
        parts.append(
            f"{c.get('accepted', c.get('images', '?'))} images of {c.get('patients', '?')} patients accepted, "
            f"{c.get('rejected', 0)} rejected, {c.get('unlabelled', 0)} unlabelled"
        )
    return "; ".join(parts) or None


def model_description(model_info: Mapping[str, Any] | None) -> dict:
    """Architecture, initialisation, input, preprocessing, augmentation, training counts and epochs
    from the bundle (``not recorded`` where the bundle does not say)."""
    m = dict(model_info or {})
    cfg = m.get("train_config") or {}
    spec = m.get("transform_spec") or {}
    tr = m.get("training") or {}
    init = m.get("init") or {}
    mcfg = cfg.get("model") or {}
    aug = cfg.get("augment") or {}
    detail = tr.get("threshold_detail") or {}

    def rec(v: Any) -> str:
        return NOT_RECORDED if v in (None, "", {}, []) else str(v)

    size = spec.get("image_size")
    out = {
        "architecture": rec(mcfg.get("arch") or ("ResNet18 (MONAI)" if m else None)),
        "initialisation": rec(init.get("init") or mcfg.get("init")),
        "input": (
            f"{size} x {size} px, {spec.get('in_channels', 1)} channel(s), aspect '{spec.get('aspect')}'"
            if size
            else NOT_RECORDED
        ),
        "preprocessing": (
            f"intensity scaled to [0, 1] (VOI LUT "
            f"{'applied' if spec.get('apply_voi', True) else 'not applied'}), normalised with mean "
            f"{spec.get('mean')} and SD {spec.get('std')}"
            if spec
            else NOT_RECORDED
        ),
        "augmentation": _augmentation_text(aug) if cfg else NOT_RECORDED,
        "n_train": rec(tr.get("n_train")),
        "n_validation": rec(detail.get("n_val")),
        "split": rec(tr.get("split")),
        "epochs": rec(tr.get("epochs_run") or cfg.get("epochs")),
        "best_epoch": rec(tr.get("best_epoch")),
        "validation_auc": "not recorded"
        if finite_or_none(tr.get("val_auc")) is None
        else f"{float(tr['val_auc']):.3f}",
        "model_card": m.get("model_card"),
    }
    return out


def _augmentation_text(aug: Mapping[str, Any]) -> str:
    """The training augmentation: the bundle's settings over cxr_cad's AugmentSpec defaults (an
    empty ``augment`` section means the defaults were used)."""
    import dataclasses

    default: Any = AugmentSpec()
    # a pydantic model (issue 13) or, in older code, a dataclass
    defaults = default.model_dump() if hasattr(default, "model_dump") else dataclasses.asdict(default)
    full = {**defaults, **dict(aug)}
    text = ", ".join(f"{k} {v}" for k, v in full.items())
    return text + ("" if aug else " (cxr_cad defaults)")


def find_model_card(bundle_path: str | os.PathLike[str] | None) -> str | None:
    """``<bundle stem>.model_card.md`` or ``model_card.md`` next to the bundle, if it exists."""
    if not bundle_path:
        return None
    p = Path(bundle_path)
    for cand in (p.with_name(f"{p.stem}.model_card.md"), p.with_name("model_card.md")):
        if cand.is_file():
            return str(cand.resolve())
    return None


def patient_level(
    ev: pd.DataFrame, threshold: float | None, *, n_resamples: int, seed: int, alpha: float
) -> dict | None:
    """Patient cluster bootstrap (AUC, sensitivity, specificity) when patient ids are known."""
    if "patient_id" not in ev.columns:
        return None
    ids = ev["patient_id"].astype("string").fillna("").str.strip()
    if (ids == "").any():
        return None
    out = cluster_bootstrap(
        ev["y_true"].to_numpy(),
        ev["score"].to_numpy(),
        ids.to_numpy(),
        threshold=threshold,
        n_resamples=n_resamples,
        seed=seed,
        alpha=alpha,
    )
    out["n_images"] = int(len(ev))
    out["threshold"] = threshold
    return out


def clinical_utility(
    ev: pd.DataFrame,
    op: Mapping[str, Any] | None,
    prevalences,
    *,
    n_bins: int,
    n_resamples: int,
    seed: int,
    alpha: float,
) -> dict:
    """Decision curve, PPV/NPV at the given prevalences (at operating point ``op``), PR curve,
    calibration slope/intercept and bootstrap CIs of Brier and ECE."""
    y, s = ev["y_true"].to_numpy(), ev["score"].to_numpy()
    pv = []
    if op is not None:
        c = op["metrics"]["confusion"]
        pv = [predictive_values(c["tp"], c["fp"], c["tn"], c["fn"], p, alpha=alpha) for p in prevalences]
    return {
        "decision_curve": decision_curve(y, s),
        "operating_point": op["name"] if op else None,
        "predictive_values": pv,
        "cohort_prevalence": float(y.mean()),
        "precision_recall": precision_recall(y, s),
        "calibration_fit": calibration_slope_intercept(y, s),
        "calibration_ci": calibration_bootstrap(y, s, n_bins=n_bins, n_resamples=n_resamples, seed=seed, alpha=alpha),
    }


def failures(ev: pd.DataFrame, threshold: float | None) -> list[dict]:
    """Every image misclassified at ``threshold``: row number, score, label, call, subgroup values.

    No identifier: the row number is the image's ``image_index`` in predictions.csv, which
    holds patient ids and paths when the user asked for identifiers."""
    if threshold is None:
        return []
    wrong = ev[(ev["score"] >= threshold) != (ev["y_true"] == 1)]
    wrong = wrong.sort_values(["y_true", "score"], ascending=[True, False], kind="mergesort")
    out = []
    for _, r in wrong.iterrows():
        row = {
            "image_index": int(r["image_index"]),
            "score": float(r["score"]),
            "label": str(r["label"]),
            "error": "false positive" if r["y_true"] == 0 else "false negative",
        }
        for col in ("view_position", "patient_sex", "age_band", "manufacturer"):
            if col in ev.columns:
                row[col] = str(r[col]) if pd.notna(r[col]) and str(r[col]).strip() else "(missing)"
        if "shift_flag" in ev.columns:
            row["shift_flag"] = str(r["shift_flag"])
        out.append(row)
    return out


def jsonable_shift(shift: Mapping[str, Any] | None) -> dict | None:
    """The cohort-shift result as given (``cohort_score, threshold, flagged, n_images, n_flagged,
    fraction_flagged, message``), JSON-safe."""
    return metrics.jsonable(dict(shift)) if shift else None
