"""``adapt``: a trained bundle + a few labelled site images -> a child bundle for that site, with
its provenance and, given evaluation images, a parent-vs-child comparison (docs/adaptation.md).

The parent scores the site and evaluation images once (:func:`cxr_cad.inference.features.score_features`:
raw probabilities and penultimate features); ``threshold``, ``recalibrate`` and ``head`` work on
those cached scores (:mod:`cxr_cad.adaptation.methods`); ``finetune`` trains from the parent
through :func:`cxr_cad.api.run_training` (``init`` = the parent bundle) on the site rows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cxr_cad.core.atomic import PathLike
from cxr_cad.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from cxr_cad.adaptation import Adapted
    from cxr_cad.inference.features import FeatureScores
    from cxr_cad.model import Bundle

log = logging.getLogger(__name__)

__all__ = ["ADAPT_FILE", "COMPARISON_FILE", "AdaptResult", "adapt"]

ADAPT_FILE = "adapt.json"
COMPARISON_FILE = "comparison.json"
EVAL_PREDICTIONS_FILE = "eval_predictions.csv"
METHOD_NAMES = ("threshold", "recalibrate", "head", "finetune")


@dataclass
class AdaptResult:
    """What ``adapt`` wrote (also ``out_dir/adapt.json``)."""

    out_dir: Path
    bundle_path: Path
    method: str
    threshold: float
    n_site: int
    n_eval: int
    record: dict[str, Any] = field(default_factory=dict)
    comparison: dict[str, Any] | None = None

    def summary_line(self) -> str:
        line = (
            f"{self.method}: child bundle {self.bundle_path} (threshold {self.threshold:.4g}) from "
            f"{self.n_site} site image(s)"
        )
        if self.comparison is not None:
            p, c = self.comparison["parent"], self.comparison["child"]
            t = self.comparison["paired_delong_child_minus_parent"]
            line += (
                f"; on {self.n_eval} other image(s): AUC {p['auc']['auc']:.3f} -> {c['auc']['auc']:.3f} "
                f"(p = {'n/a' if t['p_value'] is None else format(t['p_value'], '.3g')}), sensitivity {p['sensitivity']['value']:.3f} -> "
                f"{c['sensitivity']['value']:.3f}, specificity {p['specificity']['value']:.3f} -> "
                f"{c['specificity']['value']:.3f}"
            )
        return line


def _scored(df: pd.DataFrame, scores: FeatureScores) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows that were scored and their positions in the score arrays."""
    return df[scores.ok].reset_index(drop=True), np.arange(int(scores.ok.sum()))


def _labels(df: pd.DataFrame, positive: str) -> np.ndarray:
    return (df["label"].astype(str) == positive).to_numpy().astype(np.int64)


def _cheap_method(
    method: str,
    parent: Bundle,
    y: np.ndarray,
    groups: np.ndarray,
    scores: FeatureScores,
    rows: np.ndarray,
    *,
    calibration: str | None,
    cutoff: float | None,
    seed: int,
) -> Adapted:
    from cxr_cad.adaptation import adapt_head, adapt_recalibrate, adapt_threshold, head_weights, parent_policy
    from cxr_cad.inference.model import model_calibration

    policy = parent_policy(parent.threshold_selection)
    if method == "threshold":
        return adapt_threshold(y, scores.probability[rows], policy, model_calibration(parent))
    if method == "recalibrate":
        return adapt_recalibrate(
            y,
            scores.probability[rows],
            kind=calibration or policy.calibration,
            cutoff=policy.cutoff if cutoff is None else cutoff,
        )
    return adapt_head(
        y,
        groups,
        scores.features[rows],
        scores.logits[rows],
        parent.positive_index,
        head_weights(parent),
        policy,
        seed=seed,
    )


def _finetune(
    parent: Bundle, site: pd.DataFrame, out: Path, overrides: Mapping[str, Any]
) -> tuple[Bundle, dict[str, Any]]:
    """Train from the parent on the site rows (its recipe, ``overrides`` applied) in ``out/finetune``."""
    from cxr_cad.api._models import as_config, run_training
    from cxr_cad.model import load_bundle

    settings = {"epochs": 3, **overrides}
    cfg = as_config(parent.train_config or None, {**settings, "model.init": parent.path})
    result = run_training(site, cfg, out / "finetune", init=parent.path)
    return load_bundle(result.bundle_path), {"config_overrides": dict(settings), "run_dir": str(out / "finetune")}


def _read(path: PathLike, classes: list[str]) -> pd.DataFrame:
    from cxr_cad.manifest import read_manifest

    return read_manifest(path, require_labels=True, classes=classes)


def _check_options(method: str, calibration: str | None, cutoff: float | None) -> None:
    """ConfigError for a method, calibration or cut-off ``adapt`` cannot use (before anything loads)."""
    if method not in METHOD_NAMES:
        raise ConfigError(f"method must be one of {', '.join(METHOD_NAMES)}, not {method!r}")
    if calibration is not None and calibration not in ("platt", "temperature"):
        raise ConfigError(f"calibration must be platt or temperature, not {calibration!r}")
    if cutoff is not None and not 0.0 < float(cutoff) < 1.0:
        raise ConfigError(f"cutoff must be in (0, 1), not {cutoff}")


def _write_comparison(
    out: Path,
    parent: Any,
    evals: pd.DataFrame,
    raw: np.ndarray,
    child_p: np.ndarray,
    threshold: float,
    *,
    method: str,
    n_excluded: int,
    group_col: str,
) -> dict:
    """Parent vs child on the same evaluation images (paired DeLong): ``comparison.json``,
    ``comparison.md`` and ``eval_predictions.csv``; the parent's probabilities are calibrated as
    its own predict would (``raw``: the parent's uncalibrated probabilities)."""
    from cxr_cad.adaptation import compare, comparison_markdown
    from cxr_cad.core.atomic import atomic_write_csv, atomic_write_json, atomic_write_text
    from cxr_cad.inference.model import model_calibration

    parent_cal = model_calibration(parent)
    parent_p = raw if parent_cal is None else parent_cal(raw)
    y_eval = _labels(evals, parent.positive_class)
    comparison = compare(y_eval, parent_p, child_p, parent.threshold, threshold, method=method, n_excluded=n_excluded)
    atomic_write_json(out / COMPARISON_FILE, comparison)
    atomic_write_text(out / "comparison.md", comparison_markdown(comparison))
    table = evals[[c for c in ("path", "sop_instance_uid", group_col, "label") if c in evals.columns]].copy()
    table["parent_probability"] = parent_p
    table["child_probability"] = child_p
    atomic_write_csv(out / EVAL_PREDICTIONS_FILE, table)
    return comparison


def _finetune_child(
    parent: Any,
    site: pd.DataFrame,
    out: Path,
    overrides: Mapping[str, Any],
    record: dict[str, Any],
    evals: pd.DataFrame,
    opts: dict[str, Any],
) -> tuple[Path, float, Any]:
    """``finetune``: train from the parent on the site rows, save the child with its provenance;
    (bundle path, threshold, the child's scores of the evaluation images or None)."""
    from cxr_cad.adaptation import save_child
    from cxr_cad.inference.features import score_features
    from cxr_cad.model import load_bundle

    child, ft = _finetune(parent, site, out, overrides)
    record["finetune"] = ft
    bundle_path = save_child(
        parent,
        out,
        model=child.model,
        threshold=child.threshold,
        policy=child.threshold_method,
        params=dict(child.threshold_selection.get("params") or {}),
        site=site,
        adaptation=record,
        extra={k: v for k, v in (child.meta.get("extra") or {}).items() if k != "adaptation"},
        manifest_hash_value=child.manifest_hash,
        train_config=child.train_config,
    )
    scores = score_features(load_bundle(bundle_path), list(evals["path"].astype(str)), **opts) if len(evals) else None
    return bundle_path, float(child.threshold), scores


def adapt(
    model: PathLike,
    manifest: PathLike | pd.DataFrame,
    out_dir: PathLike,
    *,
    method: str,
    n_site: int | None = None,
    seed: int = 0,
    eval_manifest: PathLike | pd.DataFrame | None = None,
    calibration: str | None = None,
    cutoff: float | None = None,
    finetune: Mapping[str, Any] | None = None,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 32,
    workers: int = 0,
) -> AdaptResult:
    """Adapt the bundle ``model`` to a site from its labelled ``manifest`` (``cxr-cad adapt``).

    Args:
        method: ``threshold``, ``recalibrate``, ``head`` or ``finetune`` (docs/adaptation.md).
        n_site: draw this many site images (patient-grouped, stratified, ``seed``); the rest of
            the manifest (other patients) is the evaluation set unless ``eval_manifest`` is given.
            None: every row of ``manifest`` is a site row.
        eval_manifest: evaluation images; site images and images of site patients are removed.
        calibration, cutoff: for ``recalibrate`` (default: the parent's policy, else Platt, 0.5).
        finetune: training-config overrides for ``finetune`` (dotted keys; default ``{"epochs": 3}``).

    Writes ``out_dir``: ``model.pt`` (the child), ``model_card.md``, ``site_rows.csv``,
    ``adapt.json``; with evaluation rows also ``comparison.json``, ``comparison.md`` and
    ``eval_predictions.csv``. Raises UsageError/ConfigError for bad arguments, BundleError.
    """
    from cxr_cad.adaptation import exclude_site, model_with_head, save_child, split_site
    from cxr_cad.core.atomic import atomic_write_json
    from cxr_cad.inference.features import score_features
    from cxr_cad.model import load_bundle

    _check_options(method, calibration, cutoff)
    out = Path(out_dir)
    parent = load_bundle(model)
    classes = list(parent.classes)
    site_all = manifest if isinstance(manifest, pd.DataFrame) else _read(manifest, classes)
    group_col = str(((parent.train_config or {}).get("data") or {}).get("group_col", "patient_id"))
    split = split_site(site_all, n_site, seed=seed, group_col=group_col, classes=classes)
    if eval_manifest is None:
        eval_df = split.rest
    else:
        eval_df = eval_manifest if isinstance(eval_manifest, pd.DataFrame) else _read(eval_manifest, classes)
    eval_df, n_excluded = exclude_site(eval_df, split.site, group_col)

    paths = [*split.site["path"].astype(str), *eval_df["path"].astype(str)]
    opts: dict[str, Any] = {"batch_size": batch_size, "workers": workers, "device": device, "precision": precision}
    scores = score_features(parent, paths, **opts)
    n_s = len(split.site)
    site_ok, eval_ok = scores.ok[:n_s], scores.ok[n_s:]
    site = split.site[site_ok].reset_index(drop=True)
    evals = eval_df[eval_ok].reset_index(drop=True)
    pos_all = np.cumsum(scores.ok) - 1
    site_rows, eval_rows = pos_all[:n_s][site_ok], pos_all[n_s:][eval_ok]
    y_site = _labels(site, parent.positive_class)
    groups = site[group_col].astype(str).to_numpy() if group_col in site.columns else site["path"].to_numpy()

    record: dict[str, Any] = {
        "method": method,
        "site_manifest": None if isinstance(manifest, pd.DataFrame) else str(manifest),
        "n_site_requested": n_site,
        "seed": seed,
        "group_col": group_col,
        "n_site_rejected": int((~site_ok).sum()),
        "n_eval_rejected": int((~eval_ok).sum()),
        "rejected": scores.rejected,
        "n_eval_excluded_as_site": n_excluded,
    }
    child_scores = None
    if method == "finetune":
        bundle_path, threshold, child_scores = _finetune_child(parent, site, out, finetune or {}, record, evals, opts)
    else:
        adapted = _cheap_method(
            method, parent, y_site, groups, scores, site_rows, calibration=calibration, cutoff=cutoff, seed=seed
        )
        record["fit"] = adapted.fit
        record["policy_detail"] = adapted.detail
        net = parent.model if adapted.head is None else model_with_head(parent, adapted.head)
        bundle_path = save_child(
            parent,
            out,
            model=net,
            threshold=adapted.threshold,
            policy=adapted.policy,
            params=adapted.params,
            site=site,
            adaptation=record,
        )
        threshold = adapted.threshold

    comparison = None
    if len(evals):
        raw = scores.probability[eval_rows]
        if child_scores is not None:  # finetune: the child scored the evaluation images itself
            if not child_scores.ok.all():
                raise UsageError("the fine-tuned child could not score every evaluation image the parent scored")
            child_p = child_scores.probability
        else:
            child_p = adapted.probabilities(raw, scores.features[eval_rows])
        comparison = _write_comparison(
            out, parent, evals, raw, child_p, threshold, method=method, n_excluded=n_excluded, group_col=group_col
        )
    from cxr_cad.metrics import jsonable

    result = AdaptResult(out, bundle_path, method, float(threshold), len(site), len(evals), record, comparison)
    atomic_write_json(
        out / ADAPT_FILE,
        jsonable(
            {**record, "bundle": str(bundle_path), "threshold": threshold, "n_site": len(site), "n_eval": len(evals)}
        ),
    )
    log.info("%s", result.summary_line())
    return result
