"""The workflow steps: ingest, split, crossval, train, evaluate.

Each step makes the same :mod:`cxr_cad.api` call as the matching CLI command
(:func:`~cxr_cad.api.run_ingest` like ``cxr-cad ingest``, :func:`~cxr_cad.api.crossval` like
``cxr-cad crossval``, :func:`~cxr_cad.api.run_training` like ``cxr-cad train``,
:func:`~cxr_cad.api.score` like ``cxr-cad predict``) and writes into its own step folder. The
report step is in :mod:`cxr_cad.workflow.report_step`. The API imports torch only when a step
runs, so validating a workflow stays fast.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from cxr_cad import api
from cxr_cad.api._report import named_warnings
from cxr_cad.core.provenance import sha256_file
from cxr_cad.errors import ConfigError, ManifestError
from cxr_cad.manifest import grouped_split, manifest_hash, read_manifest, validate_manifest, write_manifest
from cxr_cad.workflow.runner import StepContext

log = logging.getLogger(__name__)

__all__ = [
    "ingest_step",
    "split_step",
    "crossval_step",
    "train_step",
    "evaluate_step",
    "read_step_manifest",
    "cohort_manifest",
    "MODEL_ROLES",
]


def read_step_manifest(ctx: StepContext, step: str, rel: str, *, require_labels: bool = True) -> pd.DataFrame:
    """Read a manifest another step wrote (``RUN_DIR/step/rel``), absolute paths, labels checked."""
    classes = ctx.config.get("classes")
    if ctx.config.get("label_layout") or ((ctx.config.get("train_config") or {}).get("data") or {}).get("task") == (
        "multilabel"
    ):
        classes = None  # multi-label: `label` holds the findings joined by "|"
    return read_manifest(ctx.run_dir / step / rel, require_labels=require_labels, classes=classes)


def cohort_manifest(ctx: StepContext, cohort: str) -> tuple[str, str]:
    """``(step, relative path)`` of the manifest of ``cohort`` (``train``/``test``): the split
    step's when it ran, else the ingest step's."""
    for step in ("split", "ingest"):
        rel = ctx.upstream.get(step, {}).get(f"{cohort}_manifest")
        if rel:
            return step, rel
    raise ConfigError(f"no {cohort} cohort in this workflow (set data.{cohort})")


def _policy(cfg: dict) -> api.AcceptPolicy:
    ing = cfg["ingest"]
    return api.AcceptPolicy.from_options(
        modalities=ing["modalities"], allow_lateral=not ing["reject_lateral"], apply_voi=ing["apply_voi"]
    )


def _ingest_one(ctx: StepContext, cohort: str, spec: dict) -> dict:
    """Scan (or read) one cohort into ``<step>/<cohort>/`` (manifest.csv, rejected.csv,
    unlabelled.csv, ingest.json: :func:`cxr_cad.api.run_ingest`); returns its summary."""
    cfg = ctx.config
    out = ctx.step_dir / cohort
    source, labels = spec["source"], spec["labels"]
    classes = list(cfg["classes"])
    sources: Any = [source]
    label_source = labels or "none"
    if Path(source).is_file() and source.lower().endswith(".csv"):
        sources, label_source = read_manifest(source), "manifest"
        if labels == "folders" and (sources["label"] != "").all():
            log.info("%s cohort: %s already has a label on every row; using them (not folder names)", cohort, source)
            labels = None
    outcome = api.run_ingest(
        sources,
        labels=None if labels == "manifest" else labels,
        classes=classes,
        policy=_policy(cfg),
        label_key=cfg["label_key"],
        patient_id_pattern=cfg["patient_id_pattern"],
        verify_pixels=cfg["ingest"]["verify_pixels"],
        workers=cfg["ingest"]["workers"],
        drop_unlabelled=spec["require_labels"],
        exclude=[ctx.run_dir],
        options={"step": "ingest", "cohort": cohort, **spec, **cfg["ingest"]},
        **(
            {"label_layout": cfg["label_layout"], "findings": classes, "uncertain": cfg["uncertain"]}
            if cfg.get("label_layout")
            else {}
        ),
    )
    manifest, rejected = outcome.manifest, outcome.rejected
    unlabelled = outcome.unlabelled if outcome.unlabelled is not None else manifest.iloc[0:0][["path", "label"]]
    if len(unlabelled):
        log.warning(
            "%s cohort: %d images have no label among %s; they are left out (listed in %s)",
            cohort,
            len(unlabelled),
            classes,
            out / "unlabelled.csv",
        )
    if manifest.empty:
        why = [f"no usable images in {source}: {len(rejected)} files rejected (see {out / 'rejected.csv'})"]
        if len(unlabelled):
            why.append(
                f"{len(unlabelled)} images have no label among {', '.join(classes)} (labels: {label_source}); "
                f"set data.{cohort}_labels to a labels CSV, or 'folders' for class-named folders"
            )
        outcome.unlabelled = unlabelled
        outcome.write(out)  # the rejected/unlabelled lists say why
        raise ManifestError(why, source=f"data.{cohort}")
    problems = validate_manifest(manifest, classes=None if cfg.get("label_layout") else classes)
    if problems:
        raise ManifestError(problems, source=f"data.{cohort} ({source})")
    outcome.unlabelled = unlabelled
    outcome.write(out)
    counts = {
        "images": int(len(manifest)),
        "patients": int(manifest["patient_id"].nunique()),
        "rejected": int(len(rejected)),
        "unlabelled": int(len(unlabelled)),
        "unmatched_labels": 0 if outcome.label_report is None else int(len(outcome.label_report.unmatched)),
        "by_label": {str(k) or "(none)": int(v) for k, v in manifest["label"].value_counts().items()},
        "rejected_by_reason": {str(k): int(v) for k, v in rejected["reason"].value_counts().items()},
    }
    log.info(
        "ingest %s: %d images of %d patients, %d rejected",
        cohort,
        counts["images"],
        counts["patients"],
        counts["rejected"],
    )
    return {"source": source, "labels": label_source, "manifest_hash": manifest_hash(manifest), "counts": counts}


def ingest_step(ctx: StepContext) -> dict:
    """Scan each cohort (``config["cohorts"]``: name -> source/labels/require_labels)."""
    outputs: dict[str, Any] = {"cohorts": {}}
    for cohort, spec in ctx.config["cohorts"].items():
        summary = _ingest_one(ctx, cohort, spec)
        outputs["cohorts"][cohort] = summary["counts"]
        outputs[f"{cohort}_manifest"] = f"{cohort}/manifest.csv"
        outputs[f"{cohort}_rejected"] = f"{cohort}/rejected.csv"
    return outputs


def split_step(ctx: StepContext) -> dict:
    """Hold out whole patients of the training cohort as the test cohort (stratified by label)."""
    df = read_step_manifest(ctx, "ingest", ctx.upstream["ingest"]["train_manifest"])
    train_idx, test_idx = grouped_split(df, ctx.config["test_fraction"], seed=ctx.config["seed"])
    train, test = df.iloc[train_idx].reset_index(drop=True), df.iloc[test_idx].reset_index(drop=True)
    write_manifest(train, ctx.step_dir / "train.csv")
    write_manifest(test, ctx.step_dir / "test.csv")
    overlap = set(train["patient_id"]) & set(test["patient_id"])
    if overlap:  # grouped_split guarantees this; a check that costs nothing
        raise ManifestError([f"{len(overlap)} patients are on both sides of the split"], source="split")
    counts = {
        name: {
            "images": int(len(part)),
            "patients": int(part["patient_id"].nunique()),
            "by_label": {str(k): int(v) for k, v in part["label"].value_counts().items()},
        }
        for name, part in (("train", train), ("test", test))
    }
    log.info(
        "split: %d training images (%d patients), %d held-out test images (%d patients)",
        counts["train"]["images"],
        counts["train"]["patients"],
        counts["test"]["images"],
        counts["test"]["patients"],
    )
    return {"train_manifest": "train.csv", "test_manifest": "test.csv", "counts": counts}


def _train_config(ctx: StepContext):
    return api.as_config(ctx.config["train_config"], source="workflow train section")


def crossval_step(ctx: StepContext) -> dict:
    """Patient-grouped k-fold cross-validation on the training cohort (:func:`cxr_cad.api.crossval`)."""
    step, rel = cohort_manifest(ctx, "train")
    df = read_step_manifest(ctx, step, rel)
    result = api.crossval(df, _train_config(ctx), ctx.step_dir, folds=ctx.config["folds"])
    return {
        "oof_predictions": api.OOF_FILE,
        "cv_metrics": api.METRICS_FILE,
        "n_folds": int(result.n_folds),
        "fold_status": list(result.fold_status),
    }


def train_step(ctx: StepContext) -> dict:
    """Final training on the whole training cohort (:func:`cxr_cad.api.run_training`; resumes by itself)."""
    step, rel = cohort_manifest(ctx, "train")
    df = read_step_manifest(ctx, step, rel)
    result = api.run_training(df, _train_config(ctx), ctx.step_dir)
    val_auc = float(result.val_auc)
    return {
        "bundle": os.path.relpath(result.bundle_path, ctx.step_dir),
        "best_epoch": result.best_epoch,
        "val_auc": None if val_auc != val_auc else round(val_auc, 6),
        "threshold": float(result.threshold),
        "threshold_method": result.threshold_method,
        "epochs_run": int(result.epochs_run),
    }


#: how log lines name the models of the evaluate step (as the report step does)
MODEL_ROLES = {"new": "newly trained model", "previous": "previous model", "model": "model"}


def evaluate_step(ctx: StepContext) -> dict:
    """Score the test cohort with each model (:func:`cxr_cad.api.score`, resumable).

    ``config["models"]``: name -> bundle path, or ``"train"`` for the bundle the train
    step wrote."""
    step, rel = cohort_manifest(ctx, "test")
    manifest = ctx.run_dir / step / rel
    cfg = ctx.config
    policy = _policy(cfg)
    outputs: dict[str, Any] = {"models": {}}
    for name, model in cfg["models"].items():
        path = ctx.run_dir / "train" / ctx.upstream["train"]["bundle"] if model == "train" else Path(model)
        opts = api.PredictOptions(
            batch_size=cfg["batch_size"], workers=cfg["workers"], device=cfg["device"], policy=policy
        )
        label = MODEL_ROLES.get(name, name) + (f" {sha256_file(path)[:12]}" if path.is_file() else "")
        with named_warnings(label):  # "previous model 1a2b3c4d5e6f: dataset shift: ..."
            result = api.score(path, [manifest], ctx.step_dir / name, opts)
        outputs["models"][name] = {
            "bundle": str(path),
            "n_predicted": int(result.n_predicted),
            "n_rejected": int(result.n_rejected),
            "sha256": result.model_sha256,
        }
        outputs[f"{name}_predictions"] = f"{name}/predictions.csv"
        outputs[f"{name}_rejected"] = f"{name}/rejected.csv"
    return outputs
