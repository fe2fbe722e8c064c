"""``cxr-cad report``: write the clinical report from an existing predictions table.

Also holds the report options and table helpers that ``cxr-cad evaluate`` shares.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from cxr_cad.errors import UsageError

DESCRIPTION = """\
Write a clinical metric report from PREDICTIONS.csv (one row per image with `label` and
`probability` of the positive class, e.g. predict's output on a labelled manifest, or
cross-validation's oof_predictions.csv with a `fold` column). The report folder gets
report.html (self-contained), report.pdf, metrics.json, predictions.csv (no patient ids
unless --include-identifiers) and the figures as PNG files.

The decision threshold is --threshold, else the --model bundle's, else the predictions'
`threshold` column; the cohort's Youden threshold is always reported too (labelled as
optimistic). Grad-CAM needs the model and the images: it is drawn when --model is given
and the predictions' `path` column points at readable files, and skipped with a note
otherwise.

Exit codes: 0 done; 1 failure (unreadable bundle, unwritable --out); 2 bad arguments or
a predictions table that cannot be evaluated."""


def threshold_arg(text: str) -> float:
    """argparse type of --threshold: a number in [0, 1]."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"threshold must be within [0, 1], not {text}")
    return value


def _confidence(text: str) -> float:
    value = float(text)
    if not 0.5 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"confidence level must be in [0.5, 1), e.g. 0.95; not {text}")
    return value


def _prevalences(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"prevalences must be numbers in (0, 1) separated by commas, e.g. 0.05,0.2; not {text!r}"
        ) from None
    if not values or any(not 0.0 < v < 1.0 for v in values) or len(values) > 10:
        raise argparse.ArgumentTypeError(f"give 1 to 10 prevalences in (0, 1), e.g. 0.05,0.2; not {text!r}")
    return values


def _at_least(minimum: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, not {text}")
        return value

    return parse


def add_report_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``report`` and ``evaluate``."""
    g = p.add_argument_group("report")
    g.add_argument("--out", required=True, metavar="REPORT_DIR", help="report folder (created)")
    g.add_argument(
        "--positive-class",
        default=None,
        metavar="NAME",
        help="label of the positive class (default: the model bundle's)",
    )
    g.add_argument(
        "--threshold",
        type=threshold_arg,
        default=None,
        help="decision threshold to report instead of the model's stored one",
    )
    g.add_argument("--cohort-name", default=None, help="cohort name for the header (default: the input's name)")
    g.add_argument("--cohort-date", default=None, help="cohort date for the header (free text)")
    g.add_argument(
        "--cohort-info",
        default=None,
        metavar="FILE",
        help="YAML/JSON description of the cohort: source, site, dates, population, eligibility, "
        "reference_standard, validation (internal/external); missing items show as 'not recorded'",
    )
    g.add_argument(
        "--prevalence",
        type=_prevalences,
        default=(0.05, 0.2),
        metavar="P[,P...]",
        help="prevalences at which PPV and NPV are shown (default 0.05,0.2)",
    )
    g.add_argument("--confidence", type=_confidence, default=0.95, help="confidence level of every CI (default 0.95)")
    g.add_argument(
        "--bootstrap",
        type=_at_least(100),
        default=2000,
        metavar="N",
        help="bootstrap resamples of every bootstrap CI: AUC, F1, patient cluster, Brier, ECE (default 2000)",
    )
    g.add_argument("--seed", type=int, default=0, help="bootstrap random seed (default 0)")
    g.add_argument(
        "--gradcam-per-group",
        type=_at_least(0),
        default=2,
        metavar="N",
        help="Grad-CAM images per group (TP, TN, FP, FN); 0 = none (default 2)",
    )
    g.add_argument(
        "--include-identifiers",
        action="store_true",
        help="also write patient ids, file paths and study UIDs to predictions.csv (and rejected.csv)",
    )
    g.add_argument("--no-pdf", action="store_true", help="skip report.pdf")


def report_options(args: argparse.Namespace, **fields):
    """The report's :class:`~cxr_cad.report.ReportOptions` from the shared options, plus ``fields``."""
    from cxr_cad.report import ReportOptions

    return ReportOptions(
        alpha=round(1.0 - args.confidence, 10),
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        prevalences=tuple(args.prevalence),
        positive_class=args.positive_class,
        include_identifiers=args.include_identifiers,
        pdf=not args.no_pdf,
        **fields,
    )


def cohort_description(args: argparse.Namespace, manifest_path: str | Path | None, name: str) -> dict:
    """Cohort fields for the report: --cohort-info FILE, ingest.json next to the manifest, the
    command line's name and date (each later source fills only what is still missing)."""
    from cxr_cad.report.clinical import ingest_rules_text
    from cxr_cad.report.inputs import ingest_record, read_cohort_info

    info = read_cohort_info(args.cohort_info) if args.cohort_info else {}
    ingest = ingest_record(manifest_path)
    if ingest:
        info.setdefault("source", "DICOM/image folder ingested by cxr-cad ingest")
        rules = ingest_rules_text(ingest, ingest.get("policy"))
        if rules:
            info.setdefault("ingest_rules", rules)
    info["name"] = args.cohort_name or info.get("name") or name
    if args.cohort_date or not info.get("date"):
        info["date"] = args.cohort_date
    return info


def write_rejected(rejected: pd.DataFrame, out_dir: Path) -> None:
    """rejected.csv (path, reason, detail) in the report folder; only with identifiers."""
    from cxr_cad.core.atomic import atomic_write_csv
    from cxr_cad.core.columns import REJECTED_COLUMNS

    atomic_write_csv(Path(out_dir) / "rejected.csv", rejected[[c for c in REJECTED_COLUMNS if c in rejected.columns]])


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="write the clinical report from an existing predictions table",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("predictions", metavar="PREDICTIONS.csv", help="predictions table (label, probability)")
    p.add_argument(
        "--model",
        default=None,
        metavar="BUNDLE",
        help="the bundle that made the predictions (header, threshold, Grad-CAM)",
    )
    p.add_argument(
        "--manifest",
        default=None,
        metavar="M.csv",
        help="manifest of the cohort, to add patient/view/sex/age/manufacturer columns",
    )
    p.add_argument(
        "--rejected",
        default=None,
        metavar="REJECTED.csv",
        help="files not scored (path, reason, detail), counted by reason in the cohort summary",
    )
    p.add_argument(
        "--cv-metrics",
        default=None,
        metavar="cv_metrics.json",
        help="cross-validation summary from cxr-cad crossval (per-fold curves come from `fold`)",
    )
    p.add_argument(
        "--compare-predictions",
        default=None,
        metavar="OTHER.csv",
        help="another model's predictions of the same images: both ROC curves + paired DeLong test",
    )
    p.add_argument("--compare-name", default=None, help="name of the other model (default: its file name)")
    p.add_argument("--threshold-method", default=None, help="how --threshold was chosen (shown in Methods)")
    add_report_options(p)
    p.set_defaults(func=run)


def _threshold_choice(
    args: argparse.Namespace, pred: pd.DataFrame, bundle
) -> tuple[float | None, str | None, str | None]:
    """(threshold, how it was chosen, where it came from): --threshold, else (without a bundle)
    the predictions' single ``threshold`` value, else None (the bundle's is used)."""
    threshold, method, source = args.threshold, args.threshold_method, None
    if threshold is None and bundle is None and "threshold" in pred.columns:
        values = set(pred["threshold"].astype(str)) - {""}
        if len(values) == 1:
            threshold, method = float(values.pop()), method or "as recorded in the predictions table"
            source = "predictions table"
    elif threshold is not None:
        method, source = method or "given on the command line", "command line"
    return threshold, method, source


def _gradcam(args: argparse.Namespace, bundle, pred: pd.DataFrame):
    """(Grad-CAM source or None, the note shown when there is none)."""
    from cxr_cad.report import GradcamSource

    if bundle is not None and args.gradcam_per_group > 0 and "path" in pred.columns:
        return GradcamSource.from_bundle(bundle, n_per_group=args.gradcam_per_group), None
    if bundle is None:
        return None, (
            "Grad-CAM explanations are not included: this report was written from a predictions table "
            "without the model (give --model and a table whose 'path' column points at the images)."
        )
    return None, "Grad-CAM explanations were not requested (--gradcam-per-group 0) or the table has no 'path' column."


def run(args: argparse.Namespace) -> int:
    from cxr_cad.api import cohort_shift, join_metadata, read_table
    from cxr_cad.report import model_info_from_bundle, write_report

    pred = read_table(args.predictions, "predictions table")
    bundle, info = None, None
    if args.model:
        from cxr_cad.model import load_bundle

        bundle = load_bundle(args.model)
        info = model_info_from_bundle(bundle, args.model)
    cohort = cohort_description(args, args.manifest, Path(args.predictions).parent.name or Path(args.predictions).stem)
    if args.manifest:
        from cxr_cad.manifest import manifest_hash, read_manifest

        manifest = read_manifest(args.manifest, check_files=False)
        cohort["manifest_hash"] = manifest_hash(manifest)
        pred = join_metadata(pred, manifest)
    threshold, method, source = _threshold_choice(args, pred, bundle)
    rejected = read_table(args.rejected, "rejected-files table") if args.rejected else None
    cv = None
    if args.cv_metrics:
        from cxr_cad.report.inputs import check_cv_metrics

        try:
            cv = json.loads(Path(args.cv_metrics).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"--cv-metrics {args.cv_metrics}: cannot read JSON: {str(exc)[:300]}") from exc
        cv = check_cv_metrics(cv, f"--cv-metrics {args.cv_metrics}")
    comparison = None
    if args.compare_predictions:
        other = read_table(args.compare_predictions, "comparison predictions table")
        comparison = {
            "predictions": other,
            "name": args.compare_name or Path(args.compare_predictions).stem,
            "name_a": (info or {}).get("name", "this model"),
        }
    gradcam, note = _gradcam(args, bundle, pred)
    shift = cohort_shift(pred, bundle)[0]
    opts = report_options(
        args,
        threshold=threshold,
        threshold_method=method,
        threshold_source=source,
        cohort_info=cohort,
        gradcam_note=note,
    )
    result = write_report(
        pred,
        args.out,
        opts,
        model_info=info,
        rejected_df=rejected,
        cv=cv,
        comparison=comparison,
        gradcam=gradcam,
        shift=shift,
    )
    if args.include_identifiers and rejected is not None:
        write_rejected(rejected, result.out_dir)
    auc = result.data["auc"]["delong"]
    print(
        f"report: {len(result.files)} files in {result.out_dir} "
        f"({result.data['cohort']['n_images_evaluated']} images, AUC {auc['auc']:.3f})"
        if auc["auc"] is not None
        else f"report: {len(result.files)} files in {result.out_dir}"
    )
    return 0
