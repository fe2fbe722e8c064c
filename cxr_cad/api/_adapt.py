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


@dataclass
class _Cohorts:
    """The site and evaluation rows the parent scored, their positions in its scores."""

    scores: FeatureScores
    group_col: str
    site: pd.DataFrame
    evals: pd.DataFrame
    site_rows: np.ndarray
    eval_rows: np.ndarray
    n_site_rejected: int
    n_eval_rejected: int
    n_excluded: int  # evaluation rows dropped as site images or images of site patients


def _score_cohorts(
    parent: Bundle,
    manifest: PathLike | pd.DataFrame,
    eval_manifest: PathLike | pd.DataFrame | None,
    n_site: int | None,
    seed: int,
    opts: dict[str, Any],
) -> _Cohorts:
    """Draw the site rows, keep the evaluation rows apart, and let the parent score both once."""
    from cxr_cad.adaptation import exclude_site, split_site
    from cxr_cad.inference.features import score_features

    classes = list(parent.classes)
    group_col = str(((parent.train_config or {}).get("data") or {}).get("group_col", "patient_id"))
    site_all = manifest if isinstance(manifest, pd.DataFrame) else _read(manifest, classes)
    split = split_site(site_all, n_site, seed=seed, group_col=group_col, classes=classes)
    if eval_manifest is None:
        eval_df = split.rest
    else:
        eval_df = eval_manifest if isinstance(eval_manifest, pd.DataFrame) else _read(eval_manifest, classes)
    eval_df, n_excluded = exclude_site(eval_df, split.site, group_col)
    scores = score_features(parent, [*split.site["path"].astype(str), *eval_df["path"].astype(str)], **opts)
    n_s = len(split.site)
    site_ok, eval_ok = scores.ok[:n_s], scores.ok[n_s:]
    pos_all = np.cumsum(scores.ok) - 1
    return _Cohorts(
        scores=scores,
        group_col=group_col,
        site=split.site[site_ok].reset_index(drop=True),
        evals=eval_df[eval_ok].reset_index(drop=True),
        site_rows=pos_all[:n_s][site_ok],
        eval_rows=pos_all[n_s:][eval_ok],
        n_site_rejected=int((~site_ok).sum()),
        n_eval_rejected=int((~eval_ok).sum()),
        n_excluded=n_excluded,
    )


def _record(c: _Cohorts, manifest: PathLike | pd.DataFrame, method: str, n_site: int | None, seed: int) -> dict:
    """The adaptation's provenance (``adapt.json``; stored in the child bundle)."""
    return {
        "method": method,
        "site_manifest": None if isinstance(manifest, pd.DataFrame) else str(manifest),
        "n_site_requested": n_site,
        "seed": seed,
        "group_col": c.group_col,
        "n_site_rejected": c.n_site_rejected,
        "n_eval_rejected": c.n_eval_rejected,
        "rejected": c.scores.rejected,
        "n_eval_excluded_as_site": c.n_excluded,
    }


def _cheap_child(
    parent: Bundle,
    c: _Cohorts,
    out: Path,
    record: dict[str, Any],
    method: str,
    calibration: str | None,
    cutoff: float | None,
    seed: int,
) -> tuple[Path, float, Adapted]:
    """``threshold``, ``recalibrate`` or ``head`` on the parent's cached scores; the child saved
    with its provenance. (bundle path, threshold, the fit that scores the evaluation images)."""
    from cxr_cad.adaptation import model_with_head, save_child

    site, group_col = c.site, c.group_col
    y_site = _labels(site, parent.positive_class)
    groups = site[group_col].astype(str).to_numpy() if group_col in site.columns else site["path"].to_numpy()
    adapted = _cheap_method(
        method, parent, y_site, groups, c.scores, c.site_rows, calibration=calibration, cutoff=cutoff, seed=seed
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
    return bundle_path, adapted.threshold, adapted


def _child_probabilities(c: _Cohorts, child_scores: FeatureScores | None, adapted: Adapted | None) -> np.ndarray:
    """The child's probabilities of the evaluation images: its own scores (``finetune``), else
    the cheap fit applied to the parent's cached scores."""
    if child_scores is not None:  # finetune: the child scored the evaluation images itself
        if not child_scores.ok.all():
            raise UsageError("the fine-tuned child could not score every evaluation image the parent scored")
        return child_scores.probability
    if adapted is None:
        raise ValueError("neither the child's scores nor a fit to apply")
    return adapted.probabilities(c.scores.probability[c.eval_rows], c.scores.features[c.eval_rows])


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
    from cxr_cad.core.atomic import atomic_write_json
    from cxr_cad.metrics import jsonable
    from cxr_cad.model import load_bundle

    _check_options(method, calibration, cutoff)
    out = Path(out_dir)
    parent = load_bundle(model)
    opts: dict[str, Any] = {"batch_size": batch_size, "workers": workers, "device": device, "precision": precision}
    c = _score_cohorts(parent, manifest, eval_manifest, n_site, seed, opts)
    record = _record(c, manifest, method, n_site, seed)
    child_scores, adapted = None, None
    if method == "finetune":
        bundle_path, threshold, child_scores = _finetune_child(
            parent, c.site, out, finetune or {}, record, c.evals, opts
        )
    else:
        bundle_path, threshold, adapted = _cheap_child(parent, c, out, record, method, calibration, cutoff, seed)
    comparison = None
    if len(c.evals):
        child_p = _child_probabilities(c, child_scores, adapted)
        raw = c.scores.probability[c.eval_rows]
        comparison = _write_comparison(
            out, parent, c.evals, raw, child_p, threshold, method=method, n_excluded=c.n_excluded, group_col=c.group_col
        )
    n_s, n_e = len(c.site), len(c.evals)
    result = AdaptResult(out, bundle_path, method, float(threshold), n_s, n_e, record, comparison)
    summary = {**record, "bundle": str(bundle_path), "threshold": threshold, "n_site": n_s, "n_eval": n_e}
    atomic_write_json(out / ADAPT_FILE, jsonable(summary))
    log.info("%s", result.summary_line())
    return result
