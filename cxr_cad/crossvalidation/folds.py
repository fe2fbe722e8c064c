"""Cross-validation bookkeeping: the fold checks recorded in ``crossval.json``, the checks that
a rerun may resume a folder, and the held-out scoring of each fold (reused when the same
bundle made it).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_cad.config import TrainConfig, config_diff
from cxr_cad.core.provenance import sha256_file
from cxr_cad.errors import ConfigError, OutputError
from cxr_cad.manifest import write_table
from cxr_cad.model import load_bundle
from cxr_cad.runtime import RuntimeInfo, prepare_model, resolve_runtime
from cxr_cad.training import rundir
from cxr_cad.training.data import make_items
from cxr_cad.training.loop import evaluate
from cxr_cad.training.trainer import TrainResult
from cxr_cad.transforms import make_dataset

log = logging.getLogger(__name__)

CV_RUN_FILE = "crossval.json"
FOLDS_FILE = "folds.csv"
HELDOUT_FILE = "heldout_predictions.csv"
HELDOUT_META = "heldout.json"


def fold_check(df: pd.DataFrame, folds: np.ndarray, *, group_col: str, label_col: str) -> dict:
    """Counts per fold and the leakage checks recorded in crossval.json.

    ``patients_in_several_folds`` must be 0 (patient_folds guarantees it; this is the
    recorded proof). ``duplicate_images_across_folds`` counts byte-identical images (same
    ``sha256``) that sit in different folds, when the manifest has that column.
    """
    groups = df[group_col].astype(str).to_numpy()
    per_group = pd.Series(folds).groupby(groups).nunique()
    per_fold: list[dict[str, Any]] = []
    out: dict[str, Any] = {
        "patients_in_several_folds": int((per_group > 1).sum()),
        "n_patients": int(per_group.size),
        "per_fold": per_fold,
    }
    for k in sorted(set(folds.tolist())):
        m = folds == k
        labels = df.loc[m, label_col].astype(str).value_counts().sort_index()
        per_fold.append(
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


def check_rerun(out_dir: Path, record: dict) -> None:
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


def check_stored_folds(out_dir: Path, folds_table: pd.DataFrame) -> None:
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
    bundle = load_bundle(bundle_path)
    info = resolve_runtime(cfg.runtime.device, cfg.runtime.precision)
    info = RuntimeInfo(info.device, info.precision, info.channels_last)
    prepare_model(bundle.model, info)
    dataset = make_dataset(make_items(test_df, labels), bundle.transform_spec, cache_dir=cache_dir)
    out = evaluate(bundle.model, dataset, info, batch_size=cfg.batch_size, workers=cfg.runtime.workers, desc=desc)
    if out.probabilities.shape[0] != len(test_df) or not np.array_equal(out.labels, labels):
        raise OutputError(f"held-out scoring returned {out.probabilities.shape[0]} rows for {len(test_df)} images")
    return out.probabilities[:, bundle.positive_index].astype(np.float64), bundle.sha256, float(bundle.threshold)


def heldout(
    k: int,
    fold_dir: Path,
    result: TrainResult,
    test_df: pd.DataFrame,
    labels: np.ndarray,
    cfg: TrainConfig,
    cache_dir: Path,
) -> tuple[np.ndarray, float]:
    """Held-out probabilities of fold ``k`` (reused when the same bundle made them)."""
    meta_path, pred_path = fold_dir / HELDOUT_META, fold_dir / HELDOUT_FILE
    sha = sha256_file(result.bundle_path)
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


def heldout_multilabel(
    k: int, fold_dir: Path, bundle_path: Path, test_df: pd.DataFrame, y: np.ndarray, cfg: TrainConfig, cache_dir: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Held-out sigmoid probabilities ``(n, K)`` of fold ``k`` and the fold model's per-finding
    thresholds ``(K,)`` (reused when the same bundle made them)."""
    findings = list(cfg.data.classes)
    meta_path, pred_path = fold_dir / HELDOUT_META, fold_dir / HELDOUT_FILE
    sha = sha256_file(bundle_path)
    cols = [f"probability_{f}" for f in findings]
    if meta_path.exists() and pred_path.exists():
        meta = rundir.read_json(meta_path)
        old = pd.read_csv(pred_path, dtype={"sop_instance_uid": str}, keep_default_na=False)
        if meta.get("bundle_sha256") == sha and old["row"].tolist() == test_df["row"].tolist():
            log.info("fold %d: held-out predictions already made by this bundle; reused", k)
            return old[cols].to_numpy(dtype=np.float64), np.asarray(meta["thresholds"], dtype=np.float64)
    bundle = load_bundle(bundle_path)
    record = (bundle.meta.get("extra") or {}).get("multilabel") or {}
    if record.get("findings") != findings:
        raise OutputError(f"{bundle_path}: not a multi-label bundle of findings {findings}")
    info = resolve_runtime(cfg.runtime.device, cfg.runtime.precision)
    info = RuntimeInfo(info.device, info.precision, info.channels_last)
    prepare_model(bundle.model, info)
    dataset = make_dataset(make_items(test_df, y), bundle.transform_spec, cache_dir=cache_dir)
    out = evaluate(
        bundle.model,
        dataset,
        info,
        batch_size=cfg.batch_size,
        workers=cfg.runtime.workers,
        desc=f"fold {k} held-out",
        activation="sigmoid",
    )
    if out.probabilities.shape != y.shape:
        raise OutputError(f"held-out scoring returned {out.probabilities.shape[0]} rows for {len(test_df)} images")
    thresholds = np.array([record["thresholds"][f]["value"] for f in findings], dtype=np.float64)
    table = pd.DataFrame(
        {"row": test_df["row"].to_numpy(), "sop_instance_uid": test_df["sop_instance_uid"].astype(str)}
    )
    for j, c in enumerate(cols):
        table[c] = out.probabilities[:, j].astype(np.float64)
    write_table(table, pred_path)
    rundir.write_json(meta_path, {"bundle_sha256": bundle.sha256, "thresholds": thresholds.tolist(), "n": len(table)})
    return out.probabilities.astype(np.float64), thresholds
