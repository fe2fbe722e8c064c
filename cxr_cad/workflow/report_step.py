"""The workflow's report step: ``cxr_cad.report.write_report`` on the test cohort's
predictions (with a paired DeLong comparison when two models were scored) and on the
cross-validation's out-of-fold predictions. Also :func:`headline`, the few numbers the
CLI prints."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from cxr_cad.workflow.runner import StepContext
from cxr_cad.workflow.steps import cohort_manifest

log = logging.getLogger(__name__)

__all__ = ["report_step", "headline"]


def _with_manifest_columns(pred: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest's subgroup columns (view, sex, age, manufacturer) joined on by SOP Instance UID."""
    from cxr_cad.api import join_metadata
    from cxr_cad.core.columns import METADATA_COLUMNS

    return join_metadata(pred, manifest, keys=("sop_instance_uid",), columns=METADATA_COLUMNS, strict=False)


def headline(data: dict) -> dict:
    """AUC with its DeLong CI and accuracy / sensitivity / specificity at the model's
    threshold (or the cohort's Youden point), from a report's ``metrics.json`` dict."""
    auc = (data.get("auc") or {}).get("delong_logit") or (data.get("auc") or {}).get("delong") or {}
    out: dict[str, Any] = {
        "n": (data.get("cohort") or {}).get("n_images_evaluated"),
        "auc": auc.get("auc"),
        "auc_low": auc.get("low"),
        "auc_high": auc.get("high"),
        "confidence_level": (data.get("settings") or {}).get("confidence_level", 0.95),
    }
    points = data.get("operating_points") or []
    if points:
        m = points[0]["metrics"]
        out["threshold"] = points[0]["threshold"]
        out["operating_point"] = points[0]["name"]
        for key in ("accuracy", "sensitivity", "specificity"):
            v = m.get(key)
            out[key] = v.get("value") if isinstance(v, dict) else v
    cmp_ = data.get("comparison")
    if cmp_:
        test = cmp_.get("paired_delong") or {}
        out["comparison"] = {
            "auc_a": test.get("auc_a"),
            "auc_b": test.get("auc_b"),
            "p_value": test.get("p_value"),
            "name_a": cmp_.get("name_a"),
            "name_b": cmp_.get("name_b"),
        }
    return out


def _read_csv(path: Path) -> pd.DataFrame:
    from cxr_cad.api import read_scores

    return read_scores(path)


def _test_report(ctx: StepContext, cfg: dict, opts) -> dict:
    from cxr_cad.api import cohort_shift
    from cxr_cad.model import load_bundle
    from cxr_cad.report import GradcamSource, model_info_from_bundle, write_report

    ev = ctx.upstream["evaluate"]
    step, rel = cohort_manifest(ctx, "test")
    manifest = _read_csv(ctx.run_dir / step / rel)
    names = list(ev["models"])
    main = names[0]
    bundle_path = ev["models"][main]["bundle"]
    bundle = load_bundle(bundle_path)
    pred = _with_manifest_columns(_read_csv(ctx.run_dir / "evaluate" / ev[f"{main}_predictions"]), manifest)
    rejected = _read_csv(ctx.run_dir / "evaluate" / ev[f"{main}_rejected"])
    if step == "ingest" and ctx.upstream["ingest"].get("test_rejected"):
        rejected = pd.concat(
            [_read_csv(ctx.run_dir / "ingest" / ctx.upstream["ingest"]["test_rejected"]), rejected], ignore_index=True
        )
    comparison = None
    if len(names) > 1:
        other = names[1]
        comparison = {
            "predictions": _read_csv(ctx.run_dir / "evaluate" / ev[f"{other}_predictions"]),
            "name": cfg["model_labels"].get(other, other),
            "name_a": cfg["model_labels"].get(main, main),
            "sha256": ev["models"][other]["sha256"],
        }
    cohort_name = "held-out patients of the training data" if step == "split" else "test cohort"
    shift = cohort_shift(pred, bundle)[0]  # None: reported as "not computed"
    result = write_report(
        pred,
        ctx.step_dir / "test",
        opts.replace(threshold_source="bundle", cohort_info=_cohort_info(ctx, cfg, cohort_name, step)),
        model_info=model_info_from_bundle(bundle, bundle_path),
        rejected_df=rejected,
        comparison=comparison,
        gradcam=GradcamSource.from_bundle(bundle),
        shift=shift,
    )
    return result.data


def _cohort_info(ctx: StepContext, cfg: dict, name: str, step: str) -> dict:
    """The workflow's ``cohort:`` block, the ingest rules and counts, and the validation type."""
    from cxr_cad.report.clinical import ingest_rules_text
    from cxr_cad.report.inputs import ingest_record

    info = {k: v for k, v in (cfg.get("cohort") or {}).items() if v not in (None, "")}
    info["name"] = name
    record = None
    if "ingest" in ctx.upstream:  # ingest.json beside the cohort's manifest, as for `cxr-cad ingest`
        side = "train" if step == "split" else "test"
        record = ingest_record(ctx.run_dir / "ingest" / side / "manifest.csv")
    rules = ingest_rules_text(record, cfg.get("ingest"))
    if rules:
        info.setdefault("ingest_rules", rules)
    if step == "split":
        info.setdefault("validation", "internal: held-out patients of the training data source (split by patient)")
    return info


def _cv_report(ctx: StepContext, cfg: dict, opts) -> dict:
    from cxr_cad.api import write_cv_report

    cv = ctx.upstream["crossval"]
    base = ctx.run_dir / "crossval"
    pred = _read_csv(base / cv["oof_predictions"])
    summary = json.loads((base / cv["cv_metrics"]).read_text(encoding="utf-8")) if cv.get("cv_metrics") else None
    # the per-fold `threshold` column and cv_metrics.json give the operating point at each
    # fold's own threshold; there is no single model threshold for out-of-fold predictions
    result = write_cv_report(
        pred,
        ctx.step_dir / "crossval",
        positive_class=cfg["positive_class"],
        cv_metrics=summary,
        cohort_info={
            **{k: v for k, v in (cfg.get("cohort") or {}).items() if v},
            "name": "cross-validation (out-of-fold predictions)",
            "validation": "internal (cross-validation, patient-grouped folds)",
        },
        gradcam_note="Grad-CAM is drawn in the test-cohort report (one model per fold here).",
        options=opts,
        pdf=cfg["pdf"],
    )
    return result.data


def report_step(ctx: StepContext) -> dict:
    """Write ``report/test/`` (when the evaluate step ran) and ``report/crossval/`` (when
    cross-validation ran); returns their paths and headline numbers."""
    from cxr_cad.report import ReportOptions

    cfg = ctx.config
    # defaults: prevalences 0.05, 0.2
    opts = ReportOptions(alpha=cfg["alpha"], n_bootstrap=cfg["bootstrap"], pdf=cfg["pdf"])
    outputs: dict[str, Any] = {}
    if "evaluate" in ctx.upstream:
        data = _test_report(ctx, cfg, opts)
        outputs["test_report"] = "test/report.html"
        outputs["test_metrics"] = "test/metrics.json"
        outputs["test"] = headline(data)
    if "crossval" in ctx.upstream:
        data = _cv_report(ctx, cfg, opts)
        outputs["crossval_report"] = "crossval/report.html"
        outputs["crossval_metrics"] = "crossval/metrics.json"
        outputs["crossval"] = headline(data)
        cvd = data.get("cross_validation") or {}
        outputs["crossval"]["fold_auc"] = cvd.get("auc_summary") or {}
    if not outputs:
        log.warning("report: neither an evaluation nor a cross-validation ran; nothing to report")
    return outputs
