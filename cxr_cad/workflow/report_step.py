"""The workflow's report step: :func:`cxr_cad.api.report_cohort` on the test cohort's
predictions (with a paired DeLong comparison when two models were scored), as ``cxr-cad
report``/``evaluate`` write it, and :func:`cxr_cad.api.write_cv_report` on the
cross-validation's out-of-fold predictions. Also :func:`headline`, the few numbers the CLI
prints."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from cxr_cad import api
from cxr_cad.workflow.runner import StepContext
from cxr_cad.workflow.steps import cohort_manifest

log = logging.getLogger(__name__)

__all__ = ["report_step", "headline", "model_name"]


def _with_manifest_columns(pred: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest's subgroup columns (view, sex, age, manufacturer) joined on by SOP Instance UID."""
    return api.join_metadata(pred, manifest, keys=("sop_instance_uid",), columns=api.METADATA_COLUMNS, strict=False)


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
            "shift_flagged_a": ((data.get("shift") or {}).get("flagged")),
            "shift_flagged_b": ((cmp_.get("shift_b") or {}).get("flagged")),
        }
    return out


def _read_csv(path: Path) -> pd.DataFrame:
    return api.read_scores(path)


def _test_report(ctx: StepContext, cfg: dict, opts) -> dict:
    ev = ctx.upstream["evaluate"]
    step, rel = cohort_manifest(ctx, "test")
    manifest = _read_csv(ctx.run_dir / step / rel)
    names = list(ev["models"])
    main = names[0]
    pred = _with_manifest_columns(_read_csv(ctx.run_dir / "evaluate" / ev[f"{main}_predictions"]), manifest)
    rejected = _read_csv(ctx.run_dir / "evaluate" / ev[f"{main}_rejected"])
    if step == "ingest" and ctx.upstream["ingest"].get("test_rejected"):
        rejected = pd.concat(
            [_read_csv(ctx.run_dir / "ingest" / ctx.upstream["ingest"]["test_rejected"]), rejected], ignore_index=True
        )
    cohort = _cohort_info(ctx, cfg, step)
    comparison = None
    if len(names) > 1:
        comparison = _comparison(ctx, cfg, ev, names[0], names[1], manifest, cohort.get("validation"))
    result = api.report_cohort(
        pred,
        ctx.step_dir / "test",
        opts.replace(threshold_source="bundle", cohort_info=cohort),
        bundle=ev["models"][main]["bundle"],
        rejected=rejected,
        comparison=comparison,
    )
    return result.data


def model_name(cfg: dict, key: str, sha256: str | None) -> str:
    """How the report and the log name a model of the workflow: its role and short hash
    ("previous model 1a2b3c4d5e6f")."""
    role = cfg["model_labels"].get(key, key)
    return f"{role} {sha256[:12]}" if sha256 else role


def _comparison(
    ctx: StepContext, cfg: dict, ev: dict, main: str, other: str, manifest: pd.DataFrame, validation: str | None
) -> dict:
    """The other model's scores of the same images, its own shift verdict, and how each model
    relates to this cohort (the previous model was not trained on any of it)."""
    from cxr_cad.model import load_bundle  # torch

    pred = _with_manifest_columns(_read_csv(ctx.run_dir / "evaluate" / ev[f"{other}_predictions"]), manifest)
    shift, _ = api.cohort_shift(pred, load_bundle(ev["models"][other]["bundle"]))
    retrained = main == "new" and other == "previous"
    return {
        "predictions": pred,
        "name": model_name(cfg, other, ev["models"][other]["sha256"]),
        "name_a": model_name(cfg, main, ev["models"][main]["sha256"]),
        "sha256": ev["models"][other]["sha256"],
        "shift": shift,
        "validation_a": validation if retrained else None,
        "validation_b": "external: this model was not trained on any image of this cohort" if retrained else None,
    }


def _cohort_info(ctx: StepContext, cfg: dict, step: str) -> dict:
    """The workflow's ``cohort:`` block, the ingest rules and counts, and the validation type."""
    side = "train" if step == "split" else "test"
    name = "held-out patients of the training data" if step == "split" else "test cohort"
    return api.cohort_info(
        info={**(cfg.get("cohort") or {}), "name": name},
        manifest=ctx.run_dir / "ingest" / side / "manifest.csv" if "ingest" in ctx.upstream else None,
        policy=cfg.get("ingest"),
        record_date=False,
        validation="internal: held-out patients of the training data source (split by patient)"
        if step == "split"
        else None,
        ingest_source=None,
    )


def _cv_report(ctx: StepContext, cfg: dict, opts) -> dict:
    cv = ctx.upstream["crossval"]
    base = ctx.run_dir / "crossval"
    pred = _read_csv(base / cv["oof_predictions"])
    summary = json.loads((base / cv["cv_metrics"]).read_text(encoding="utf-8")) if cv.get("cv_metrics") else None
    # the per-fold `threshold` column and cv_metrics.json give the operating point at each
    # fold's own threshold; there is no single model threshold for out-of-fold predictions
    result = api.write_cv_report(
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
    cfg = ctx.config
    # defaults: prevalences 0.05, 0.2
    opts = api.ReportOptions(alpha=cfg["alpha"], n_bootstrap=cfg["bootstrap"], pdf=cfg["pdf"])
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
