"""``cxr-cad report``: write the clinical report from an existing predictions table.

Also holds the report options and table helpers that ``cxr-cad evaluate`` shares.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cxr_cad import api
from cxr_cad.cli.options import threshold_arg

DESCRIPTION = """\
Write a clinical metric report from PREDICTIONS.csv (one row per image with `label` and
`probability` of the positive class, e.g. predict's output on a labelled manifest, or
cross-validation's oof_predictions.csv with a `fold` column). The report folder gets
report.html (self-contained), report.pdf, metrics.json, predictions.csv (no patient ids
unless --include-identifiers) and the figures as PNG files.

The positive class is the --model bundle's, else the --cv-metrics summary's, else what the
table's columns record (a positive_class column; y_true beside label; decision beside
probability and threshold), else --positive-class. The decision threshold is --threshold,
else the --model bundle's, else the predictions' `threshold` column; the cohort's Youden
threshold is always reported too (labelled as optimistic). The model is the --model bundle,
else the one the table's model_sha256 column names; shift_score gives the cohort-shift
section and metadata columns (view, sex, age, manufacturer) the subgroups. The cohort is
named by --cohort-name, else by the folder holding the images (the `path` column).

The table is checked first: an empty label, a probability that is empty, not a number, not
finite or outside [0, 1], one class only or fewer than two evaluable rows is refused (exit 2,
every problem listed); --allow-partial writes a report anyway, counting such rows as not
evaluated. Grad-CAM needs the model and the images: it is drawn when --model is given
and the predictions' `path` column points at readable files, and skipped with a note
otherwise.

Exit codes: 0 done; 1 failure (unreadable bundle, unwritable --out); 2 bad arguments or
a predictions table that cannot be evaluated."""


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


def report_options(args: argparse.Namespace, **fields) -> api.ReportOptions:
    """The report's :class:`~cxr_cad.report.ReportOptions` from the shared options, plus ``fields``."""
    return api.ReportOptions(
        alpha=round(1.0 - args.confidence, 10),
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        prevalences=tuple(args.prevalence),
        positive_class=args.positive_class,
        include_identifiers=args.include_identifiers,
        pdf=not args.no_pdf,
        **fields,
    )


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
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="write a report even when rows lack a label or a finite probability, or one class or one "
        "row remains (a deliberate partial report; such rows are counted as not evaluated)",
    )
    add_report_options(p)
    p.set_defaults(func=run)


#: Why a report has no Grad-CAM gallery: without --model, and with it.
_NO_MODEL_NOTE = (
    "Grad-CAM explanations are not included: this report was written from a predictions table "
    "without the model (give --model and a table whose 'path' column points at the images)."
)
_NOT_REQUESTED_NOTE = (
    "Grad-CAM explanations were not requested (--gradcam-per-group 0) or the table has no 'path' column."
)


def run(args: argparse.Namespace) -> int:
    predictions = Path(args.predictions)
    comparison = None
    if args.compare_predictions:
        comparison = {
            "predictions": api.read_table(args.compare_predictions, "comparison predictions table"),
            "name": args.compare_name or Path(args.compare_predictions).stem,
        }
    threshold_given = args.threshold is not None
    result = api.report_cohort(
        predictions,
        args.out,
        report_options(
            args,
            threshold=args.threshold,
            threshold_method=args.threshold_method or ("given on the command line" if threshold_given else None),
            threshold_source="command line" if threshold_given else None,
            allow_partial=args.allow_partial,
            cohort_info=api.cohort_info(
                args.cohort_name,
                default_name="",  # report_cohort names it after the folder holding the images
                info=args.cohort_info,
                manifest=args.manifest,
                date=args.cohort_date,
            ),
            gradcam_note=_NOT_REQUESTED_NOTE if args.model else _NO_MODEL_NOTE,
        ),
        bundle=args.model,
        manifest=args.manifest,
        rejected=args.rejected,
        cv=args.cv_metrics,
        comparison=comparison,
        gradcam_per_group=args.gradcam_per_group,
    )
    if result.data.get("task") == "multilabel":  # docs/report.md#multi-label-reports
        m = result.data["macro"]
        macro = "not estimable" if m["auc"] != m["auc"] else format(m["auc"], ".3f")
        print(f"report: {len(result.files)} files in {result.out_dir} (multi-label, macro AUC {macro})")
        return 0
    auc = result.data["auc"]["delong"]
    print(
        f"report: {len(result.files)} files in {result.out_dir} "
        f"({result.data['cohort']['n_images_evaluated']} images, AUC {auc['auc']:.3f})"
        if auc["auc"] is not None
        else f"report: {len(result.files)} files in {result.out_dir}"
    )
    return 0
