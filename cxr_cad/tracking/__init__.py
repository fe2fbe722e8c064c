"""Experiment tracking in MLflow for ``train``, ``crossval`` and ``evaluate`` (``--track mlflow[:URI]``).

One MLflow run per command, with
- params: the resolved config, flattened to dotted keys (``optim.lr``);
- metrics: per epoch (``train_loss``, ``val_loss``, ``val_auc``, ``lr``, ``images_per_s`` at
  ``step=epoch``; for crossval one series per fold, ``fold<k>.val_auc``) and final figures;
- artifacts: the bundle and its model card, the report, the predictions (CSV tables without
  identifiers unless ``--include-identifiers``: :mod:`cxr_cad.tracking.privacy`);
- tags: ``cxr_cad.command``, ``cxr_cad.identifiers``, ``manifest_hash``, ``parent_bundle``,
  ``versions.<package>``.

The store is :func:`~cxr_cad.tracking.store.parse_track`'s (default: a local SQLite database,
``mlflow.db`` in the current folder). Only rank 0 of a torchrun job logs. MLflow is the
optional extra ``track`` (mlflow-skinny with SQLAlchemy and Alembic for database stores).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cxr_cad.core.provenance import software_versions
from cxr_cad.errors import ConfigError
from cxr_cad.tracking.privacy import TRACKING_IDENTIFIERS, strip_csv, strip_identifiers
from cxr_cad.tracking.store import DEFAULT_URI, ENV_URI, open_run, parse_track, redact, resolve_uri

__all__ = [
    "DEFAULT_URI",
    "ENV_URI",
    "EXPERIMENT",
    "TRACKING_IDENTIFIERS",
    "Tracker",
    "add_track_option",
    "flatten",
    "log_crossval_run",
    "log_evaluate_run",
    "log_training_run",
    "parse_track",
    "resolve_uri",
    "strip_identifiers",
    "track_run",
]

log = logging.getLogger(__name__)

EXPERIMENT = "cxr_cad"
_VERSIONED = ("torch", "monai", "numpy", "pydicom", "scikit-learn", "mlflow-skinny", "mlflow", "sqlalchemy")
_EPOCH_KEYS = ("train_loss", "val_loss", "val_auc", "lr", "images_per_s", "seconds")


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    """Nested dict -> ``{"a.b": "value"}`` (lists as their text), MLflow's param form."""
    out: dict[str, str] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = str(list(d) if isinstance(d, tuple) else d)[:6000]
    return out


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(float(v)) else None


class Tracker:
    """An active MLflow run (or, with ``client=None``, a no-op with the same methods).

    ``include_identifiers=False`` (the default) uploads CSV artifacts without identifier columns.
    """

    def __init__(
        self,
        client: Any = None,
        run_id: str | None = None,
        *,
        include_identifiers: bool = False,
        identifier_columns: tuple[str, ...] = (),
    ):
        self.client, self.run_id = client, run_id
        self.include_identifiers = include_identifiers
        self.identifier_columns = (*TRACKING_IDENTIFIERS, *identifier_columns)

    @property
    def active(self) -> bool:
        return self.client is not None

    def log_metrics(self, metrics: dict, step: int | None = None, prefix: str = "") -> None:
        if not self.active:
            return
        for k, v in metrics.items():
            if (x := _number(v)) is not None:  # MLflow keys: letters, digits, _ - . / and space only
                key = re.sub(r"[^\w\-. /]", "_", f"{prefix}{k}")
                self.client.log_metric(self.run_id, key, x, step=step or 0)

    def epoch_callback(self, prefix: str = ""):
        """``train_model`` callback: ``cb(epoch, record)`` logs the epoch's figures at ``step=epoch``."""

        def cb(epoch: int, record: dict) -> None:
            self.log_metrics({k: record.get(k) for k in _EPOCH_KEYS}, step=epoch, prefix=prefix)

        return cb

    def log_epochs_csv(self, path: Path, prefix: str = "") -> None:
        """Per-epoch figures from a run folder's ``train_log.csv`` (runs that were not watched live)."""
        if not self.active or not Path(path).is_file():
            return
        import pandas as pd  # here: the CLI's cheap argument checks must not pay for pandas

        for rec in pd.read_csv(path).to_dict("records"):
            self.log_metrics({k: rec.get(k) for k in _EPOCH_KEYS}, step=int(rec["epoch"]), prefix=prefix)

    def log_artifact(self, path: str | os.PathLike, subdir: str | None = None) -> None:
        """Upload a file or a folder; CSVs without identifiers unless ``include_identifiers``."""
        p = Path(path)
        if not self.active or not p.exists():
            return
        if p.is_dir() and (self.include_identifiers or not any(p.rglob("*.csv"))):
            self.client.log_artifacts(self.run_id, str(p), subdir or p.name)
            return
        if not p.is_dir() and (self.include_identifiers or p.suffix != ".csv"):
            self.client.log_artifact(self.run_id, str(p), subdir)
            return
        with tempfile.TemporaryDirectory(prefix="cxr-cad-track-") as tmp:  # a copy without identifiers
            copy = Path(tmp) / p.name
            if p.is_dir():
                shutil.copytree(p, copy, ignore=lambda d, names: [n for n in names if n.endswith(".csv")])
                for csv in p.rglob("*.csv"):
                    strip_csv(csv, copy / csv.relative_to(p), self.identifier_columns)
                self.client.log_artifacts(self.run_id, str(copy), subdir or p.name)
            else:
                strip_csv(p, copy, self.identifier_columns)
                self.client.log_artifact(self.run_id, str(copy), subdir)

    def set_tags(self, tags: dict) -> None:
        if self.active:
            for k, v in tags.items():
                if v is not None:
                    self.client.set_tag(self.run_id, k, str(v)[:5000])


@contextmanager
def track_run(
    spec: str | None,
    command: str,
    params: dict | None = None,
    *,
    run_name: str | None = None,
    experiment: str = EXPERIMENT,
    include_identifiers: bool = False,
) -> Iterator[Tracker]:
    """Open an MLflow run for ``command`` (or a no-op tracker when ``spec`` is None / rank > 0).

    The run ends FINISHED, or FAILED when the block raises (the exception propagates).
    ``include_identifiers`` uploads CSV artifacts with their identifier columns.
    """
    uri = parse_track(spec)
    if uri is None or int(os.environ.get("RANK", "0")) != 0:
        yield Tracker()
        return
    client, run_id = open_run(uri, command, experiment, run_name)
    group = ((params or {}).get("data") or {}).get("group_col")  # the patient column of a training config
    tracker = Tracker(
        client, run_id, include_identifiers=include_identifiers, identifier_columns=(group,) if group else ()
    )
    tracker.set_tags({f"versions.{k}": v for k, v in software_versions(_VERSIONED).items() if v != "not installed"})
    tracker.set_tags({"cxr_cad.identifiers": "included" if include_identifiers else "removed"})
    if params:
        for k, v in flatten(params).items():
            client.log_param(run_id, k, v)
    log.info("MLflow run %s in %s (experiment %s)", run_id, redact(uri), experiment)
    try:
        yield tracker
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")


def log_training_run(tracker: Tracker, run_dir: str | os.PathLike, prefix: str = "") -> None:
    """Final figures, tags and artifacts of a finished ``train_model`` run folder."""
    run_dir = Path(run_dir)
    result_file = run_dir / "result.json"
    if not tracker.active or not result_file.is_file():
        return
    result = json.loads(result_file.read_text(encoding="utf-8"))
    tracker.log_metrics(
        {
            "best_val_auc": result.get("val_auc"),
            "threshold": result.get("threshold"),
            "best_epoch": result.get("best_epoch"),
            "epochs_run": result.get("epochs_run"),
        },
        prefix=prefix,
    )
    if not prefix:
        parent = result.get("parent_bundle") or {}
        tracker.set_tags(
            {"manifest_hash": result.get("manifest_hash"), "parent_bundle": parent.get("sha256") or "none"}
        )
    for name in ("model.pt", "model_card.md", "val_predictions.csv", "train_log.csv", "config.yaml", "run.json"):
        tracker.log_artifact(run_dir / name, prefix.rstrip(".") or None)


def add_track_option(parser: Any) -> None:
    """``--track mlflow[:URI]`` (checked here: a bad URI is a usage error before any work) and
    ``--include-identifiers`` on a subcommand's parser."""
    import argparse

    def _check(text: str) -> str:
        try:
            parse_track(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc
        return text

    parser.add_argument(
        "--track",
        metavar="mlflow[:URI]",
        default=None,
        type=_check,
        help=f"log params, metrics and artifacts to MLflow (default ${ENV_URI}, else {DEFAULT_URI}: a "
        "SQLite file in the current folder, artifacts in mlruns/ beside it; needs the 'track' extra)",
    )
    if "--include-identifiers" not in getattr(parser, "_option_string_actions", {}):
        parser.add_argument(
            "--include-identifiers",
            action="store_true",
            help="with --track: upload patient ids, file paths and UIDs in the CSV artifacts too (removed by default)",
        )


def log_crossval_run(tracker: Tracker, res: Any, manifest_hash: str | None = None) -> None:
    """Per-fold epochs (``fold<k>.``), fold and pooled figures, predictions and metrics of a crossval."""
    if not tracker.active:
        return
    m = res.metrics
    for f in m.get("per_fold", []):
        k = f.get("fold")
        tracker.log_epochs_csv(res.out_dir / "folds" / str(k) / "train_log.csv", prefix=f"fold{k}.")
        tracker.log_metrics(
            {
                "auc": (f.get("auc") or {}).get("auc"),
                "threshold": f.get("threshold"),
                "best_epoch": f.get("best_epoch"),
            },
            prefix=f"fold{k}.",
        )
    auc = (m.get("across_folds") or {}).get("auc") or {}
    pooled = (m.get("pooled") or {}).get("auc_delong") or {}
    tracker.log_metrics(
        {
            "auc_mean": auc.get("mean"),
            "auc_sd": auc.get("sd"),
            "pooled_auc": pooled.get("auc"),
            "pooled_auc_low": pooled.get("low"),
            "pooled_auc_high": pooled.get("high"),
        }
    )
    parent = "none"
    for result_file in sorted((res.out_dir / "folds").glob("*/result.json")):
        parent = (json.loads(result_file.read_text(encoding="utf-8")).get("parent_bundle") or {}).get(
            "sha256"
        ) or "none"
        break
    tracker.set_tags({"manifest_hash": manifest_hash, "parent_bundle": parent})
    for name in ("oof_predictions.csv", "cv_metrics.json", "roc_curves.csv", "folds.csv"):
        tracker.log_artifact(res.out_dir / name)
    if res.final_bundle is not None:
        log_training_run(tracker, Path(res.final_bundle).parent, prefix="final.")


def log_evaluate_run(spec: str | None, options: Mapping[str, Any], bundle: Any, result: Any) -> None:
    """One MLflow run for ``cxr-cad evaluate``: options (a mapping of the command's settings),
    AUC with CI and operating points, the report. ``options["include_identifiers"]`` (the
    ``--include-identifiers`` flag) keeps identifiers in the uploaded tables and the ``query`` param."""
    if parse_track(spec) is None:
        return
    ids = bool(options.get("include_identifiers"))
    hidden = ("func", "track") if ids else ("func", "track", "query")  # a QIDO query may name a patient
    params = {k: v for k, v in options.items() if k not in hidden and not callable(v)}
    with track_run(spec, "evaluate", params, include_identifiers=ids) as tracker:
        d = result.data
        primary = (d.get("auc") or {}).get((d.get("auc") or {}).get("primary", "delong")) or {}
        tracker.log_metrics({"auc": primary.get("auc"), "auc_low": primary.get("low"), "auc_high": primary.get("high")})
        for op in d.get("operating_points") or []:
            m = op.get("metrics") or {}
            tracker.log_metrics(
                {k: (m.get(k) or {}).get("value") for k in ("sensitivity", "specificity", "ppv", "npv")},
                prefix=f"{op.get('name')}.",
            )
        tracker.set_tags(
            {
                "manifest_hash": (d.get("cohort") or {}).get("manifest_hash"),
                "parent_bundle": bundle.sha256,
                "bundle_manifest_hash": bundle.manifest_hash,
            }
        )
        tracker.log_artifact(result.out_dir, "report")
