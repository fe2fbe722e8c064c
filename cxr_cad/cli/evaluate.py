"""``cxr-cad evaluate``: score a labelled cohort with a model bundle and write the clinical report."""

from __future__ import annotations

import argparse
from pathlib import Path

from cxr_cad import api
from cxr_cad.cli.options import add_output_options, add_pacs_query, add_policy_options, pacs_from, policy_from
from cxr_cad.cli.report import add_report_options, report_options
from cxr_cad.tracking import add_track_option

DESCRIPTION = """\
Score a labelled cohort with a model bundle and write the clinical report into REPORT_DIR:
report.html (self-contained), report.pdf, metrics.json, predictions.csv and the figures.

The cohort is a manifest (--manifest M.csv, from cxr-cad ingest, with a `label` column) or
a folder laid out as DIR/<class name>/... (labels from the folder names). Every file is
accounted for: scored, or counted as rejected by reason code in the cohort summary.
--compare OTHER_BUNDLE scores the same images with a second model (e.g. the old model
against a retrained one) and adds both ROC curves and the paired DeLong test.

Exit codes: 0 done; 1 failure (bad bundle, unwritable folder); 2 bad arguments, a cohort
without labels, or a manifest that fails validation."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score a labelled cohort and write the clinical report",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "cohort_dir",
        nargs="?",
        default=None,
        metavar="DIR",
        help="cohort folder with one sub-folder per class (instead of --manifest), or a "
        "dicomweb:URL archive with --labels (and --query to select the studies)",
    )
    p.add_argument(
        "--labels",
        default=None,
        metavar="L.csv",
        help="with a dicomweb: cohort: labels CSV with a `label` column and a key column "
        "(sop_instance_uid, study_instance_uid, patient_id; detected in that order)",
    )
    p.add_argument("--model", required=True, metavar="BUNDLE", help="model bundle (.pt)")
    p.add_argument("--manifest", default=None, metavar="M.csv", help="labelled manifest of the cohort")
    p.add_argument(
        "--compare",
        default=None,
        metavar="OTHER_BUNDLE",
        help="second model to compare on the same images (paired DeLong test)",
    )
    p.add_argument(
        "--work-dir",
        default=None,
        metavar="DIR",
        help="keep the scoring runs here (resumable); default: a temporary folder, removed",
    )
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--workers", type=int, default=None, help="decode processes (default: predict's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--allow-int8",
        action="store_true",
        help="score with the bundle's verified int8 variant when it is the fastest (docs/predict.md#int8)",
    )
    add_policy_options(
        p,
        lateral_help="score lateral views too",
        no_voi_help="scan the cohort without VOI LUT / windowing (scoring follows the bundle's setting)",
    )
    add_report_options(p)
    add_output_options(p)  # --dicom-out/--secondary-capture/--stow (docs/pacs.md)
    add_pacs_query(
        p,
        help="QIDO-RS filter for a dicomweb: cohort, repeatable (e.g. Modality=DX, "
        "StudyDate=20240101-20240131, AccessionNumber=A123)",
    )
    add_track_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # a cohort folder names the cohort; a manifest's images name it by their folder (in report_cohort)
    name = "" if args.manifest else Path(args.cohort_dir or "").name
    cohort = api.cohort_info(
        args.cohort_name, default_name=name, info=args.cohort_info, manifest=args.manifest, date=args.cohort_date
    )
    threshold_given = args.threshold is not None
    result = api.evaluate_cohort(
        args.model,
        args.out,
        report_options(
            args,
            threshold=args.threshold,
            threshold_method="given on the command line" if threshold_given else None,
            threshold_source="command line" if threshold_given else "bundle",
            cohort_info=cohort,
            gradcam_note="Grad-CAM explanations were not requested (--gradcam-per-group 0).",
        ),
        manifest=args.manifest,
        folder=args.cohort_dir,
        labels=args.labels,
        predict=api.PredictOptions(
            batch_size=args.batch_size, workers=args.workers, device=args.device, allow_int8=args.allow_int8
        ),
        policy=policy_from(args),  # a bad --modalities stops here, before anything is scanned
        compare=args.compare,
        work_dir=args.work_dir,
        pacs=pacs_from(args),
        gradcam_per_group=args.gradcam_per_group,
        track=args.track,
        track_params={k: v for k, v in vars(args).items() if k != "func"},
    )
    d = result.report.data
    if d.get("task") == "multilabel":  # docs/report.md#multi-label-reports
        m = d["macro"]
        print(
            f"evaluate: {d['n_images']} images evaluated, {d['n_rejected']} not evaluated; macro AUC "
            f"{'not estimable' if m['auc'] != m['auc'] else format(m['auc'], '.3f')} over {m['n_findings']} "
            f"findings ({len(d['flagged'])} flagged); report in {result.report.out_dir}"
        )
    else:
        auc = d["auc"]["delong"]["auc"]
        print(
            f"evaluate: {d['cohort']['n_images_evaluated']} images evaluated, {d['cohort']['n_rejected']} not "
            f"evaluated; AUC {'not estimable' if auc is None else f'{auc:.3f}'}; report in {result.report.out_dir}"
        )
    if result.dicom:
        print(f"evaluate: DICOM: {result.dicom}")
    return 0
