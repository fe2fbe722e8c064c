"""Patient-grouped, label-stratified K-fold cross-validation: :func:`run_crossval`.

For each fold ``k`` a model is trained with :func:`cxr_cad.engine.train.train_model` on the
other K-1 folds (which it splits again by patient into training and an inner validation
set: best epoch, early stopping and the decision threshold are chosen there, never on fold
``k``), then fold ``k`` is scored with that model. Every image is scored exactly once, by
the one model that never saw its patient.

Layout of ``RUN_DIR``::

    crossval.json          settings, fingerprint, manifest hash, the patient-overlap check
    folds.csv              row, sop_instance_uid, patient (group) id, label, fold
    cache/                 decoded + resized images, shared by every fold and the final model
    folds/<k>/             the fold's training run folder (train_model layout: model.pt,
                           train_log.csv, checkpoint.pt, result.json, ...) plus
                           heldout_predictions.csv and heldout.json
    oof_predictions.csv    one row per manifest row: fold, label, y_true, probability,
                           threshold (the fold's own), decision
    cv_metrics.json        per-fold metrics, mean +/- SD across folds, pooled out-of-fold
                           metrics, ROC data, best epochs (see cxr_cad.metrics.crossval_summary)
    roc_curves.csv         per-fold, mean (+/- 1 SD band) and pooled ROC curves
    final/                 with ``final=True``: a training run on all images (model.pt)

Reruns resume: a finished fold is not retrained (its ``result.json`` exists), an interrupted
fold continues from its checkpoint, held-out predictions made by the same bundle are reused.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_cad.config import TrainConfig, config_diff
from cxr_cad.engine import rundir
from cxr_cad.engine.data import label_indices, make_items
from cxr_cad.engine.train import TrainResult, train_model
from cxr_cad.errors import ConfigError, ManifestError, OutputError
from cxr_cad.manifest import manifest_hash, patient_folds, write_table
from cxr_cad.metrics import UndefinedMetricWarning, crossval_summary, jsonable, roc_table

log = logging.getLogger(__name__)

CV_RUN_FILE = "crossval.json"
FOLDS_FILE = "folds.csv"
OOF_FILE = "oof_predictions.csv"
METRICS_FILE = "cv_metrics.json"
ROC_FILE = "roc_curves.csv"
HELDOUT_FILE = "heldout_predictions.csv"
HELDOUT_META = "heldout.json"
FINAL_DIR = "final"


@dataclass
class CrossvalResult:
    """What :func:`run_crossval` produced (files under ``out_dir``)."""

    out_dir: Path
    n_folds: int
    oof: pd.DataFrame  # oof_predictions.csv
    metrics: dict  # cv_metrics.json (NaN as float here, null in the file)
    fold_status: list[str]  # per fold: "trained", "resumed" or "finished before"
    final_bundle: Path | None


def fold_check(df: pd.DataFrame, folds: np.ndarray, *, group_col: str, label_col: str) -> dict:
    """Counts per fold and the leakage checks recorded in crossval.json.

    ``patients_in_several_folds`` must be 0 (patient_folds guarantees it; this is the
    recorded proof). ``duplicate_images_across_folds`` counts byte-identical images (same
    ``sha256``) that sit in different folds, when the manifest has that column.
    """
    groups = df[group_col].astype(str).to_numpy()
    per_group = pd.Series(folds).groupby(groups).nunique()
    out = {"patients_in_several_folds": int((per_group > 1).sum()), "n_patients": int(per_group.size), "per_fold": []}
    for k in sorted(set(folds.tolist())):
        m = folds == k
        labels = df.loc[m, label_col].astype(str).value_counts().sort_index()
        out["per_fold"].append(
            {
                "fold": int(k),
                "n_images": int(m.sum()),
                "n_patients": int(len(set(groups[m]))),
                "labels": {str(c): int(n) for c, n in labels.items()},
            }
        )
    dup = None
    if "sha256" in df.columns:
        sha = df["sha256"].astype(str).str.strip()
        known = (sha != "").to_numpy()
        if known.any():
            spread = pd.Series(folds[known]).groupby(sha[known].to_numpy()).nunique()
            dup = int((spread > 1).sum())
            if dup:
                log.warning(
                    "%d byte-identical image(s) appear in more than one fold (under different patient "
                    "ids); their held-out scores may be optimistic",
                    dup,
                )
    out["duplicate_images_across_folds"] = dup
    return out


def _fold_config(cfg: TrainConfig, cache_dir: Path) -> TrainConfig:
    """Each fold splits its training rows by patient for the inner validation set."""
    return replace(cfg, data=replace(cfg.data, split="grouped", cache_dir=str(cache_dir)))


def _check_rerun(out_dir: Path, record: dict) -> None:
    """Raise ConfigError when ``out_dir`` holds a cross-validation with other settings or data."""
    path = out_dir / CV_RUN_FILE
    if not path.exists():
        return
    old = rundir.read_json(path)
    problems = []
    for key in ("n_folds", "fingerprint", "manifest_hash", "group_col", "label_col"):
        if old.get(key) != record[key]:
            what = f"{old.get(key)} -> {record[key]}"
            if key == "fingerprint":
                try:
                    what = (
                        "; ".join(
                            config_diff(
                                TrainConfig.from_dict(old.get("config")), TrainConfig.from_dict(record["config"])
                            )
                        )
                        or what
                    )
                except ConfigError:
                    pass
            problems.append(f"it holds a cross-validation with a different {key}: {what}")
    if problems:
        raise ConfigError(
            problems + ["rerun with the same settings to resume it, or choose a new --out"], source=str(out_dir)
        )


def _check_stored_folds(out_dir: Path, folds_table: pd.DataFrame) -> None:
    path = out_dir / FOLDS_FILE
    if not path.exists():
        return
    old = pd.read_csv(path, dtype=str, keep_default_na=False)
    same = (
        len(old) == len(folds_table)
        and old["sop_instance_uid"].tolist() == folds_table["sop_instance_uid"].astype(str).tolist()
        and old["fold"].astype(int).tolist() == folds_table["fold"].astype(int).tolist()
    )
    if not same:
        raise ConfigError(
            [
                f"the fold assignment differs from the one stored in {path} (another manifest row "
                "order or library version?); choose a new --out"
            ],
            source=str(out_dir),
        )


def predict_heldout(
    bundle_path: Path,
    test_df: pd.DataFrame,
    labels: np.ndarray,
    cfg: TrainConfig,
    cache_dir: Path,
    *,
    desc: str = "held-out",
) -> tuple[np.ndarray, str, float]:
    """Positive-class probabilities of ``test_df`` under the bundle; (probs, bundle sha256, threshold).

    Uses the same decoded-image cache as training (identical item keys), single process.
    """
    from cxr_cad.engine.loop import evaluate
    from cxr_cad.engine.runtime import RuntimeInfo, prepare_model, resolve_runtime
    from cxr_cad.model import load_bundle
    from cxr_cad.transforms import make_dataset

    bundle = load_bundle(bundle_path)
    try:
        info = resolve_runtime(cfg.runtime.device, cfg.runtime.precision)
    except ValueError as exc:
        raise ConfigError([str(exc)]) from exc
    info = RuntimeInfo(info.device, info.precision, info.channels_last)
    prepare_model(bundle.model, info)
    dataset = make_dataset(make_items(test_df, labels), bundle.transform_spec, cache_dir=cache_dir)
    out = evaluate(bundle.model, dataset, info, batch_size=cfg.batch_size, workers=cfg.runtime.workers, desc=desc)
    if out.probabilities.shape[0] != len(test_df) or not np.array_equal(out.labels, labels):
        raise OutputError(f"held-out scoring returned {out.probabilities.shape[0]} rows for {len(test_df)} images")
    return out.probabilities[:, bundle.positive_index].astype(np.float64), bundle.sha256, float(bundle.threshold)


def _heldout(
    k: int,
    fold_dir: Path,
    result: TrainResult,
    test_df: pd.DataFrame,
    labels: np.ndarray,
    cfg: TrainConfig,
    cache_dir: Path,
) -> tuple[np.ndarray, float]:
    """Held-out probabilities of fold ``k`` (reused when the same bundle made them)."""
    from cxr_cad.model import file_sha256

    meta_path, pred_path = fold_dir / HELDOUT_META, fold_dir / HELDOUT_FILE
    sha = file_sha256(result.bundle_path)
    if meta_path.exists() and pred_path.exists():
        meta = rundir.read_json(meta_path)
        old = pd.read_csv(pred_path, dtype={"sop_instance_uid": str}, keep_default_na=False)
        if (
            meta.get("bundle_sha256") == sha
            and len(old) == len(test_df)
            and old["row"].tolist() == test_df["row"].tolist()
        ):
            log.info("fold %d: held-out predictions already made by this bundle; reused", k)
            return old["probability"].to_numpy(dtype=np.float64), float(meta["threshold"])
    probs, bundle_sha, threshold = predict_heldout(
        result.bundle_path, test_df, labels, cfg, cache_dir, desc=f"fold {k} held-out"
    )
    table = pd.DataFrame(
        {
            "row": test_df["row"].to_numpy(),
            "sop_instance_uid": test_df["sop_instance_uid"].astype(str),
            "probability": probs,
        }
    )
    write_table(table, pred_path)
    rundir.write_json(meta_path, {"bundle_sha256": bundle_sha, "threshold": threshold, "n": len(table)})
    return probs, threshold


def _decision_names(classes: tuple[str, ...], positive: str) -> tuple[str, str]:
    others = [c for c in classes if c != positive]
    return positive, (others[0] if len(others) == 1 else f"not {positive}")


def run_crossval(
    manifest_df: pd.DataFrame,
    out_dir: str | Path,
    cfg: TrainConfig,
    *,
    n_folds: int = 5,
    init: str | None = None,
    final: bool = False,
    n_bootstrap: int = 2000,
) -> CrossvalResult:
    """K-fold cross-validation grouped by patient and stratified by label (see module docstring).

    Args:
        manifest_df: labelled manifest (``read_manifest(..., require_labels=True)``; paths
            readable as given). Needs ``path``, ``sop_instance_uid``, the label column and
            the group column of ``cfg.data``.
        out_dir: the cross-validation run folder (created; rerun to resume).
        cfg: training config used for every fold (``data.split`` is forced to ``grouped``:
            each fold's inner validation split is by patient; ``data.val_fraction`` sets its size).
        n_folds: K >= 2.
        init: overrides ``cfg.model.init`` for every fold and the final model.
        final: ``True``/``"retrain"``: also train one model on all images with the median
            best epoch and the pooled out-of-fold Youden threshold (``final/model.pt``);
            ``"ensemble"``: ``final/model.pt`` is the K fold models as one bundle whose
            probability is the mean of theirs (:func:`ensemble_final`), no further training.
        n_bootstrap: resamples of the pooled bootstrap AUC CI.

    Raises:
        ManifestError: missing/unknown labels, too few patients for K folds.
        ConfigError: ``out_dir`` holds a cross-validation with other settings or data.
        OutputError, WeightsError, BundleError: as :func:`train_model`.
    """
    if init is not None:
        cfg = replace(cfg, model=replace(cfg.model, init=str(init)))
    data = cfg.data
    out_dir = Path(out_dir).resolve()
    df = manifest_df.reset_index(drop=True).copy()
    df["row"] = np.arange(len(df))
    missing = [c for c in ("path", "sop_instance_uid", data.group_col) if c not in df.columns]
    if missing:
        raise ManifestError([f"the manifest has no {c!r} column" for c in missing])
    labels = label_indices(df, data.classes, data.label_col, what="cross-validation")
    absent = [c for i, c in enumerate(data.classes) if not (labels == i).any()]
    if absent:  # one-class manifest: refuse (exit 2) rather than cross-validate a constant model
        raise ManifestError(
            [
                f"the manifest holds no image of class(es) {absent}; cross-validation needs "
                f"every one of {list(data.classes)} (check the labels, or --classes)"
            ]
        )
    pos_index = data.classes.index(data.positive_class)
    folds = patient_folds(df, n_folds, seed=cfg.seed, label_col=data.label_col, group_col=data.group_col)
    check = fold_check(df, folds, group_col=data.group_col, label_col=data.label_col)
    if check["patients_in_several_folds"]:
        raise ManifestError([f"{check['patients_in_several_folds']} patient(s) ended up in several folds"])
    record = {
        "n_folds": int(n_folds),
        "fingerprint": cfg.fingerprint(),
        "manifest_hash": manifest_hash(df),
        "group_col": data.group_col,
        "label_col": data.label_col,
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "fold_check": check,
        "n_images": len(df),
        "versions": rundir.package_versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    folds_table = pd.DataFrame(
        {
            "row": df["row"],
            "sop_instance_uid": df["sop_instance_uid"].astype(str),
            data.group_col: df[data.group_col].astype(str),
            "label": df[data.label_col].astype(str),
            "fold": folds,
        }
    )
    _check_rerun(out_dir, record)
    _check_stored_folds(out_dir, folds_table)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the run folder {out_dir}: {exc.strerror or exc}") from exc
    if not (out_dir / FOLDS_FILE).exists():
        write_table(folds_table, out_dir / FOLDS_FILE)
    if not (out_dir / CV_RUN_FILE).exists():
        rundir.write_json(out_dir / CV_RUN_FILE, record)
    log.info(
        "%d-fold cross-validation of %d images from %d patients, grouped by %s; no patient in two folds",
        n_folds,
        len(df),
        check["n_patients"],
        data.group_col,
    )

    cache_dir = Path(data.cache_dir) if data.cache_dir else out_dir / "cache"
    fold_cfg = _fold_config(cfg, cache_dir)
    if fold_cfg.data.val_fraction == 0:
        log.warning(
            "data.val_fraction is 0: folds train without inner validation (no early stopping; "
            "threshold.value %.3f is used)",
            cfg.threshold.value,
        )
    probs = np.full(len(df), np.nan)
    thresholds = np.full(len(df), np.nan)
    status, fold_info = [], []
    for k in range(int(n_folds)):
        fold_dir = out_dir / "folds" / str(k)
        test = folds == k
        status.append(
            "finished before"
            if (fold_dir / rundir.RESULT_FILE).exists()
            else "resumed"
            if (fold_dir / "checkpoint.pt").exists()
            else "trained"
        )
        if status[-1] == "finished before":
            log.info("fold %d (%d of %d): already trained; not retrained", k, k + 1, n_folds)
        else:
            log.info(
                "fold %d (%d of %d): training on %d images, %d held out",
                k,
                k + 1,
                n_folds,
                int((~test).sum()),
                int(test.sum()),
            )
        result = train_model(df[~test].reset_index(drop=True), fold_dir, fold_cfg)
        test_df = df[test].reset_index(drop=True)
        p, thr = _heldout(k, fold_dir, result, test_df, labels[test], fold_cfg, cache_dir)
        probs[test], thresholds[test] = p, thr
        fold_info.append(
            {
                "fold": k,
                "status": status[-1],
                "best_epoch": result.best_epoch,
                "epochs_run": result.epochs_run,
                "stopped_early": result.stopped_early,
                "inner_val_auc": result.val_auc,
                "threshold": result.threshold,
                "threshold_method": result.threshold_method,
                "inner_split": result.split,
            }
        )

    names = _decision_names(data.classes, data.positive_class)
    oof = pd.DataFrame(
        {
            "row": df["row"],
            "path": df["path"].astype(str),
            "sop_instance_uid": df["sop_instance_uid"].astype(str),
            data.group_col: df[data.group_col].astype(str),
            "fold": folds,
            "label": df[data.label_col].astype(str),
            "y_true": (labels == pos_index).astype(int),
            "probability": probs,
            "threshold": thresholds,
        }
    )
    oof["decision"] = np.where(oof["probability"] >= oof["threshold"], names[0], names[1])
    if oof["probability"].isna().any() or len(oof) != len(df) or oof["row"].duplicated().any():
        raise OutputError("internal check failed: not every image was scored exactly once")
    write_table(oof, out_dir / OOF_FILE)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UndefinedMetricWarning)
        metrics = crossval_summary(oof, class_names=(names[1], names[0]), n_bootstrap=n_bootstrap, seed=cfg.seed)
    undefined = sorted({str(w.message) for w in caught if issubclass(w.category, UndefinedMetricWarning)})
    for message in undefined:
        log.info("undefined statistic (reported as null): %s", message)
    for w in caught:  # anything else is passed on unchanged
        if not issubclass(w.category, UndefinedMetricWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    for entry, info in zip(metrics["per_fold"], fold_info):
        entry.update(info)
    best = [f["best_epoch"] for f in fold_info]
    metrics["best_epochs"] = best
    metrics["settings"] = {
        "n_folds": int(n_folds),
        "positive_class": data.positive_class,
        "classes": list(data.classes),
        "group_col": data.group_col,
        "decision_rule": "positive when probability >= threshold",
        "fold_check": check,
        "n_bootstrap": n_bootstrap,
    }
    metrics["undefined"] = undefined
    final_bundle = None
    if final == "ensemble":
        metrics["final"] = ensemble_final(
            df,
            out_dir,
            [out_dir / "folds" / str(k) / rundir.BUNDLE_FILE for k in range(int(n_folds))],
            metrics["pooled"]["youden_threshold"],
            [f["threshold"] for f in fold_info],
        )
        final_bundle = Path(metrics["final"]["bundle"])
    elif final:
        metrics["final"] = _train_final(
            df,
            out_dir,
            cfg,
            cache_dir,
            best,
            metrics["pooled"]["youden_threshold"],
            [f["threshold"] for f in fold_info],
            int(n_folds),
        )
        final_bundle = Path(metrics["final"]["bundle"])
    rundir.write_json(out_dir / METRICS_FILE, jsonable(metrics))
    write_table(roc_table(metrics["roc"]), out_dir / ROC_FILE)
    pooled = metrics["pooled"]["auc_delong"]
    log.info(
        "pooled out-of-fold AUC %.4f (95%% CI %.4f-%.4f); mean across folds %.4f +/- %.4f",
        pooled["auc"],
        pooled["low"],
        pooled["high"],
        metrics["across_folds"]["auc"]["mean"],
        metrics["across_folds"]["auc"]["sd"],
    )
    return CrossvalResult(
        out_dir=out_dir, n_folds=int(n_folds), oof=oof, metrics=metrics, fold_status=status, final_bundle=final_bundle
    )


def ensemble_final(
    df: pd.DataFrame, out_dir: Path, fold_bundles: list[Path], youden: float, fold_thresholds: list[float]
) -> dict:
    """``final/model.pt``: the fold models as one bundle averaging their probabilities.

    The members are the fold networks (a fold bundle with hflip TTA keeps it: the ensemble
    then averages flipped views too). The threshold is the pooled out-of-fold Youden
    threshold (each image scored by the fold model that never saw its patient: the nearest
    unbiased stand-in for the ensemble's own scores), else the mean of the fold thresholds.
    """
    from cxr_cad.model import ProbabilityAverage, load_bundle, save_bundle, unwrap_model

    bundles = [load_bundle(p) for p in fold_bundles]
    first = bundles[0]
    members, hflip = [], False
    for b in bundles:
        net = unwrap_model(b.model)
        if isinstance(net, ProbabilityAverage):
            members += list(net.members)
            hflip = hflip or net.hflip
        else:
            members.append(net)
        if b.classes != first.classes or b.transform_spec != first.transform_spec:
            raise OutputError(
                f"fold bundle {b.path} differs from {first.path} in classes or transform spec; "
                "they cannot form one ensemble"
            )
    threshold = youden if math.isfinite(youden) else float(np.mean(fold_thresholds))
    method = "youden" if math.isfinite(youden) else "fixed"
    chosen_on = {
        "manifest_hash": manifest_hash(df),
        "n": len(df),
        "description": f"pooled out-of-fold predictions of {len(bundles)}-fold patient-grouped "
        "cross-validation (crossval/oof_predictions.csv)",
    }
    path = out_dir / FINAL_DIR / rundir.BUNDLE_FILE
    save_bundle(
        path,
        ProbabilityAverage(members, hflip=hflip),
        classes=first.classes,
        positive_class=first.positive_class,
        transform_spec=first.transform_spec,
        threshold=float(threshold),
        threshold_method=method,
        threshold_params={} if method == "youden" else {"value": float(threshold)},
        threshold_chosen_on=chosen_on,
        manifest_hash=manifest_hash(df),
        train_config=first.train_config,
        init_record=first.meta.get("init"),
        extra={
            "crossval": {
                "final": "ensemble",
                "n_folds": len(bundles),
                "members": [b.sha256 for b in bundles],
                "fold_thresholds": fold_thresholds,
            },
            # the shift score taps the first member: fold 0's training-data summary matches it
            **({"shift": first.meta["extra"]["shift"]} if (first.meta.get("extra") or {}).get("shift") else {}),
        },
    )
    log.info(
        "final model: ensemble of the %d fold models (%d networks%s), threshold %.4f (pooled OOF %s)",
        len(bundles),
        len(members),
        ", hflip TTA" if hflip else "",
        threshold,
        method,
    )
    return {
        "bundle": str(path),
        "epochs": None,
        "kind": "ensemble",
        "members": len(members),
        "threshold": float(threshold),
        "threshold_method": f"pooled out-of-fold {method}" if method == "youden" else "mean of fold thresholds",
        "fold_threshold_mean": float(np.mean(fold_thresholds)),
    }


def final_epochs(best_epochs: list[int | None], default: int) -> int:
    """Median of the folds' best epochs, rounded up; ``default`` when no fold had validation."""
    known = [int(b) for b in best_epochs if b is not None]
    return int(math.ceil(float(np.median(known)))) if known else int(default)


def _train_final(
    df: pd.DataFrame,
    out_dir: Path,
    cfg: TrainConfig,
    cache_dir: Path,
    best: list,
    youden: float,
    fold_thresholds: list[float],
    n_folds: int,
) -> dict:
    """Train on every image for the CV-chosen epochs; the bundle gets the pooled OOF Youden threshold."""
    from cxr_cad.model import load_bundle, save_bundle

    epochs = final_epochs(best, cfg.epochs)
    threshold = youden if math.isfinite(youden) else float(np.mean(fold_thresholds))
    method = "youden" if math.isfinite(youden) else "fixed"
    final_cfg = replace(
        cfg,
        epochs=epochs,
        data=replace(cfg.data, split="grouped", val_fraction=0.0, cache_dir=str(cache_dir)),
        early_stopping=replace(cfg.early_stopping, patience=0),
        threshold=replace(cfg.threshold, method="fixed", value=float(threshold)),
    )
    final_dir = out_dir / FINAL_DIR
    log.info(
        "final model: all %d images, %d epoch(s) (median best epoch), threshold %.4f (pooled OOF %s)",
        len(df),
        epochs,
        threshold,
        method,
    )
    result = train_model(df.drop(columns=["row"]), final_dir, final_cfg)
    chosen_on = {
        "manifest_hash": manifest_hash(df),
        "n": len(df),
        "description": f"pooled out-of-fold predictions of {n_folds}-fold patient-grouped "
        "cross-validation (crossval/oof_predictions.csv)",
    }
    bundle = load_bundle(result.bundle_path)
    if bundle.threshold_selection.get("chosen_on") != chosen_on:
        meta = bundle.meta
        extra = dict(meta.get("extra") or {})
        extra["crossval"] = {
            "n_folds": n_folds,
            "best_epochs": best,
            "epochs": epochs,
            "fold_thresholds": fold_thresholds,
            "fold_threshold_mean": float(np.mean(fold_thresholds)),
        }
        save_bundle(
            result.bundle_path,
            bundle.model,
            classes=bundle.classes,
            positive_class=bundle.positive_class,
            transform_spec=bundle.transform_spec,
            threshold=float(threshold),
            threshold_method=method,
            threshold_params={} if method == "youden" else {"value": float(threshold)},
            threshold_chosen_on=chosen_on,
            manifest_hash=bundle.manifest_hash,
            parent_bundle_sha256=meta.get("parent_bundle_sha256"),
            train_config=bundle.train_config,
            init_record=meta.get("init"),
            extra=extra,
        )
    return {
        "bundle": str(result.bundle_path),
        "epochs": epochs,
        "threshold": float(threshold),
        "threshold_method": f"pooled out-of-fold {method}" if method == "youden" else "mean of fold thresholds",
        "fold_threshold_mean": float(np.mean(fold_thresholds)),
    }
