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
band, the study's table at each fold's own threshold and at the pooled Youden threshold).

Scale-out (docs/scale-out.md): `--fold K` runs fold K alone (0-based) into --out, so a Slurm
array or a Kubernetes indexed Job runs the folds in parallel on one shared run folder; then
`--merge RUN` pools them into exactly the numbers one process gives (the same files, the
final model and the report). The merge refuses (exit 2, naming them) when folds are missing
or were run with another config, manifest or number of folds."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "crossval",
        help="patient-grouped K-fold cross-validation",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--manifest", help="labelled manifest CSV (from `cxr-cad ingest`); with --merge: default the run's copy"
    )
    p.add_argument("--folds", type=_folds, default=None, metavar="K", help="number of folds, >= 2 (default 5)")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (created; rerun to resume); with --merge: RUN")
    job = p.add_mutually_exclusive_group()
    job.add_argument(
        "--fold",
        type=non_negative_int,
        default=None,
        metavar="K",
        help="run only fold K (0-based) into --out, as its own job (no pooled results, no report)",
    )
    job.add_argument(
        "--merge",
        metavar="RUN",
        default=None,
        help="pool the finished folds of RUN (the fold jobs' --out) into the results, the final model "
        "and the report; settings and manifest default to those stored in RUN",
    )
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
    if args.merge is not None:
        return _merge(args)
    missing = [flag for flag, value in (("--manifest", args.manifest), ("--out", args.out)) if not value]
    if missing:
        raise UsageError(f"{' and '.join(missing)} required (or --merge RUN to pool finished folds)")
    folds = 5 if args.folds is None else args.folds
    if args.fold is not None and args.fold >= folds:
        raise UsageError(f"--fold must be one of 0..{folds - 1} (--folds {folds}), not {args.fold}")
    cfg = train_config(args.config, overrides_from(args, "crossval"))
    df = api.read_labelled(args.manifest, cfg.data.classes)
    if args.fold is not None:
        fold = api.crossval_fold(df, cfg, args.out, fold=args.fold, folds=folds, init=args.init)
        r = fold.record
        at = (  # multi-label: one threshold per finding
            ", ".join(f"{f} {t:.4f}" for f, t in r["thresholds"].items())
            if "thresholds" in r
            else f"{r['threshold']:.4f}"
        )
        print(
            f"fold {fold.fold} of {fold.n_folds}: {fold.status}; {r['n_heldout']} held-out images scored at "
            f"threshold {at}; best epoch {r['best_epoch']}"
        )
        print(f"merge when every fold is done: cxr-cad crossval --merge {fold.out_dir}")
        return 0
    from cxr_cad.manifest import manifest_hash  # pandas: after the argument checks

    params, ids = {**cfg.to_dict(), "folds": folds}, getattr(args, "include_identifiers", False)
    with track_run(args.track, "crossval", params, include_identifiers=ids) as tracker:  # docs/export.md
        res = api.crossval(
            df, cfg, args.out, folds=folds, init=args.init, final=args.final or False, n_bootstrap=args.bootstrap
        )
        log_crossval_run(tracker, res, manifest_hash(df))
    _finish(args, res, df, tracker)
    return 0


def _given_settings(args: argparse.Namespace) -> bool:
    """Whether the merge command names training settings (then they must be the folds' own)."""
    return bool(args.config) or any(v is not None for v in overrides_from(args, "crossval").values())


def _merge(args: argparse.Namespace) -> int:
    """``--merge RUN``: pool the finished folds, then the report (as a one-process run)."""
    run_dir = Path(args.merge)
    if args.out and Path(args.out).resolve() != run_dir.resolve():
        raise UsageError(f"--out {args.out} is not --merge {args.merge}; the merge writes into RUN")
    if not run_dir.is_dir():
        raise UsageError(f"--merge {args.merge}: no such run folder")
    cfg = train_config(args.config, overrides_from(args, "crossval")) if _given_settings(args) else None
    if cfg is not None and args.init is not None:
        cfg = cfg.replace(model=cfg.model.replace(init=str(args.init)))
    from cxr_cad.manifest import manifest_hash  # pandas: after the argument checks

    ids = getattr(args, "include_identifiers", False)
    with track_run(args.track, "crossval", {"merge": str(run_dir)}, include_identifiers=ids) as tracker:
        res = api.crossval_merge(
            run_dir, args.manifest, cfg, folds=args.folds, final=args.final or False, n_bootstrap=args.bootstrap
        )
        df = api.read_labelled(args.manifest or run_dir / "manifest.csv", res.metrics["settings"]["classes"])
        log_crossval_run(tracker, res, manifest_hash(df))
    _finish(args, res, df, tracker)
    return 0


def _finish(args: argparse.Namespace, res, df, tracker) -> None:
    """Print the result and write the cross-validation report (unless --no-report)."""
    from cxr_cad.manifest import manifest_hash

    _print_result(res)
    if args.no_report:
        return
    name = res.manifest_name or (Path(args.manifest).name if args.manifest else "the cross-validated manifest")
    report = api.write_cv_report(
        res,
        res.out_dir / "report",
        positive_class=res.metrics["settings"]["positive_class"],
        manifest=df,
        cohort_info={
            "name": f"cross-validation of {name} ({res.n_folds} folds, out-of-fold predictions)",
            "manifest_hash": manifest_hash(df),
        },
        options=api.ReportOptions(n_bootstrap=max(args.bootstrap, 100)),
        pdf=not args.no_pdf,
    )
    tracker.log_artifact(report.out_dir, "report")  # the MLflow run is closed; artifacts can still be added
    print(f"report: {report.out_dir / 'report.html'}")


def _print_result(res) -> None:
    m = res.metrics
    if m.get("task") == "multilabel":  # one line per finding (docs/train.md#multi-label)
        for r in m["per_finding"]:
            auc = (
                "flagged (too few cases)"
                if r["small_sample"]
                else f"{r['auc']:.3f} ({r['auc_low']:.3f}-{r['auc_high']:.3f})"
            )
            print(f"{r['finding']:<22} positives {r['n_positive']:>4}  AUC {auc}")
        print(f"macro AUC {m['macro']['auc']:.4f} over {m['macro']['n_findings']} findings")
        return
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
