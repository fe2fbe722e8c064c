"""``cxr-cad crossval``: patient-grouped K-fold cross-validation of the training recipe."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from cxr_cad import api
from cxr_cad.cli.options import non_negative_int
from cxr_cad.cli.train import train_config
from cxr_cad.cli.train_options import add_train_flags, overrides_from
from cxr_cad.errors import UsageError
from cxr_cad.tracking import add_track_option, log_crossval_run, track_run

DESCRIPTION = """\
K-fold cross-validation, stratified by label and grouped by patient (no patient in two folds;
checked and recorded). For each fold a model is trained on the other folds (with an inner
patient-grouped validation split for the best epoch, early stopping and the threshold) and
scores the held-out fold. Writes to --out: oof_predictions.csv (every image once: fold, label,
probability, decision at its fold's threshold), folds/K/ (each fold's bundle and train log),
cv_metrics.json (per-fold metrics, mean +/- SD across folds, pooled out-of-fold AUC with DeLong
and bootstrap CIs, metrics at the folds' thresholds and at the pooled Youden threshold, ROC
data, best epochs), roc_curves.csv, and with --final final/model.pt (all images, the median best
epoch, the pooled out-of-fold Youden threshold). Decoded images are cached once for all folds.
Rerunning the same command resumes: finished folds are not retrained. At the end the
cross-validation report is written to --out/report/ (per-fold ROC curves with the mean +/- SD
band, the study's table at each fold's own threshold and at the pooled Youden threshold)."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "crossval",
        help="patient-grouped K-fold cross-validation",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--manifest", required=True, help="labelled manifest CSV (from `cxr-cad ingest`)")
    p.add_argument("--folds", type=_folds, default=5, metavar="K", help="number of folds, >= 2 (default 5)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (created; rerun to resume)")
    p.add_argument("--config", help="YAML training config (docs/train.md); options below override it")
    p.add_argument(
        "--final",
        nargs="?",
        const="retrain",
        choices=["retrain", "ensemble"],
        default=None,
        help="also write final/model.pt: 'retrain' (the default when given without a value) trains "
        "one model on all images; 'ensemble' stores the K fold models as one bundle that averages "
        "their probabilities (no further training)",
    )
    p.add_argument(
        "--no-report",
        action="store_true",
        help="skip the cross-validation report (RUN_DIR/report/: report.html, report.pdf, metrics.json)",
    )
    p.add_argument("--no-pdf", action="store_true", help="write the report without report.pdf")
    p.add_argument(
        "--bootstrap",
        type=non_negative_int,
        default=2000,
        metavar="N",
        help="bootstrap resamples for the pooled AUC CI; 0 = DeLong only (default 2000)",
    )
    add_train_flags(p, "crossval", title="training overrides (default: the config file, else the study defaults)")
    add_track_option(p)
    p.set_defaults(func=run)


def _folds(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be >= 2, not {text}")
    return value


def _fmt(ci: dict) -> str:
    if ci is None or ci.get("auc") is None or math.isnan(ci["auc"]):
        return "n/a"
    return f"{ci['auc']:.4f} ({100 * (1 - ci.get('alpha', 0.05)):g}% CI {ci['low']:.4f}-{ci['high']:.4f})"


def run(args: argparse.Namespace) -> int:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("crossval runs as a single process; start it without torchrun")
    from cxr_cad.manifest import manifest_hash  # pandas: after the argument checks

    cfg = train_config(args.config, overrides_from(args, "crossval"))
    df = api.read_labelled(args.manifest, cfg.data.classes)
    with track_run(args.track, "crossval", {**cfg.to_dict(), "folds": args.folds}) as tracker:  # docs/export.md
        res = api.crossval(
            df, cfg, args.out, folds=args.folds, init=args.init, final=args.final or False, n_bootstrap=args.bootstrap
        )
        log_crossval_run(tracker, res, manifest_hash(df))
    _print_result(res)
    if not args.no_report:
        report = api.write_cv_report(
            res,
            Path(args.out) / "report",
            positive_class=cfg.data.positive_class,
            manifest=df,
            cohort_info={
                "name": f"cross-validation of {Path(args.manifest).name} ({args.folds} folds, out-of-fold predictions)",
                "manifest_hash": manifest_hash(df),
            },
            options=api.ReportOptions(n_bootstrap=max(args.bootstrap, 100)),
            pdf=not args.no_pdf,
        )
        tracker.log_artifact(report.out_dir, "report")  # the MLflow run is closed; artifacts can still be added
        print(f"report: {report.out_dir / 'report.html'}")
    return 0


def _print_result(res) -> None:
    m = res.metrics
    for f in m["per_fold"]:
        sens, spec = f["metrics"]["sensitivity"]["value"], f["metrics"]["specificity"]["value"]
        print(
            f"fold {f['fold']}: {f['status']}; AUC {f['auc']['auc']:.4f}, sensitivity {sens:.3f}, "
            f"specificity {spec:.3f} at threshold {f['threshold']:.4f}; best epoch {f['best_epoch']}"
        )
    auc = m["across_folds"]["auc"]
    print(f"AUC across folds: {auc['mean']:.4f} +/- {auc['sd']:.4f} (mean +/- SD)")
    print(
        f"pooled out-of-fold AUC: {_fmt(m['pooled']['auc_delong'])} DeLong"
        + (f"; {_fmt(m['pooled']['auc_bootstrap'])} bootstrap" if m["pooled"]["auc_bootstrap"] else "")
    )
    print(f"out-of-fold predictions: {res.out_dir / 'oof_predictions.csv'}")
    print(f"metrics: {res.out_dir / 'cv_metrics.json'}")
    if res.final_bundle is not None:
        what = (
            f"ensemble of {m['final']['members']} fold networks"
            if m["final"].get("kind") == "ensemble"
            else f"{m['final']['epochs']} epochs"
        )
        print(f"final bundle: {res.final_bundle} ({what}, threshold {m['final']['threshold']:.4f})")
