"""``cxr-cad evaluate``: score a labelled cohort with a model bundle and write the clinical report."""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import pandas as pd

from cxr_cad.cli.report import (
    add_report_options,
    cohort_description,
    join_metadata,
    read_table,
    report_options,
    write_rejected,
)
from cxr_cad.errors import UsageError

log = logging.getLogger(__name__)

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
    p.add_argument("--allow-lateral", action="store_true", help="score lateral views too")
    add_report_options(p)
    from cxr_cad.pacs.cliopts import add_output_options  # --dicom-out/--secondary-capture/--stow (docs/pacs.md)

    add_output_options(p)
    p.add_argument(
        "--query",
        action="append",
        default=None,
        metavar="KEYWORD=VALUE",
        help="QIDO-RS filter for a dicomweb: cohort, repeatable (e.g. Modality=DX, "
        "StudyDate=20240101-20240131, AccessionNumber=A123)",
    )
    from cxr_cad.tracking import add_track_option

    add_track_option(p)
    p.set_defaults(func=run)


def _cohort_manifest(
    args: argparse.Namespace, classes: list[str], work: Path
) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """(manifest file to score, manifest table with absolute paths, files rejected by the scan)."""
    from cxr_cad.manifest import labels_from_folders, read_manifest, resolve_paths, write_manifest

    if bool(args.manifest) == bool(args.cohort_dir):
        raise UsageError("give either --manifest M.csv or a cohort folder DIR, not both or neither")
    from cxr_cad.pacs.client import is_dicomweb

    if args.cohort_dir and is_dicomweb(args.cohort_dir):
        return _dicomweb_cohort(args, classes, work)
    if getattr(args, "labels", None) or getattr(args, "query", None):
        raise UsageError(
            "--labels and --query are for a dicomweb: cohort; a folder cohort takes its labels "
            "from DIR/<class>/, a manifest from its label column"
        )
    if args.manifest:
        path = Path(args.manifest)
        df = resolve_paths(read_manifest(path, require_labels=True, check_files=False), path.parent)
        return path, df, pd.DataFrame(columns=["path", "reason", "detail"])
    from cxr_cad.io import AcceptPolicy
    from cxr_cad.io.scan import scan_sources

    root = Path(args.cohort_dir)
    if not root.is_dir():
        raise UsageError(f"cohort folder {root} not found")
    scan = scan_sources([root], policy=AcceptPolicy(reject_lateral=not args.allow_lateral))
    df = labels_from_folders(scan.accepted, classes=classes)
    unknown = sorted(set(df["label"]) - set(classes))
    if unknown:
        raise UsageError(
            f"{root}: images sit in folders {', '.join(unknown[:5])} that are not classes of the "
            f"model ({', '.join(classes)}); put each image under DIR/<class>/ or use --manifest"
        )
    path = work / "cohort_manifest.csv"
    write_manifest(df, path)
    return path, df, scan.rejected


def _dicomweb_cohort(
    args: argparse.Namespace, classes: list[str], work: Path
) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """A labelled cohort from an archive: the instances the query selects are fetched into the
    (temporary) work folder, scanned and joined to ``--labels``. Instances that could not be
    fetched keep their network reason code, images without a label are NO_LABEL: every
    selected instance ends in the predictions or the rejected table."""
    from cxr_cad.errors import Reason
    from cxr_cad.io import AcceptPolicy
    from cxr_cad.io.scan import scan_sources
    from cxr_cad.manifest import join_labels, write_manifest
    from cxr_cad.pacs.cliopts import materialise

    if not args.labels:
        raise UsageError(
            "a dicomweb: cohort needs --labels L.csv (a `label` column and a sop_instance_uid, "
            "study_instance_uid or patient_id column)"
        )
    fetched = work / "dicomweb"
    failed_csv = work / "fetch_failed.csv"
    materialise(args.cohort_dir, fetched, args.query, failed_csv=failed_csv)
    scan = scan_sources([fetched], policy=AcceptPolicy(reject_lateral=not args.allow_lateral))
    df, _report = join_labels(scan.accepted, args.labels, classes=classes)
    unlabelled = df["label"].astype(str) == ""
    failed = pd.read_csv(failed_csv, dtype=str, keep_default_na=False)
    rejected = pd.concat(
        [
            scan.rejected,
            pd.DataFrame(
                {
                    "path": df.loc[unlabelled, "path"],
                    "reason": str(Reason.NO_LABEL),
                    "detail": f"no row of {Path(args.labels).name} matches this image",
                }
            ),
            pd.DataFrame(
                {
                    "path": "dicomweb:" + failed["sop_instance_uid"],
                    "reason": failed["reason"],
                    "detail": failed["detail"],
                }
            ),
        ],
        ignore_index=True,
    )
    df = df.loc[~unlabelled].reset_index(drop=True)
    if df.empty:
        raise UsageError(f"no image of the dicomweb: cohort has a label in {args.labels}")
    path = work / "cohort_manifest.csv"
    write_manifest(df, path)
    return path, df, rejected


def _score(
    bundle_path: str, manifest_path: Path, out: Path, args: argparse.Namespace
) -> tuple[pd.DataFrame, pd.DataFrame]:
    from cxr_cad.engine.predict import PredictOptions, predict
    from cxr_cad.io import AcceptPolicy

    options = PredictOptions(
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        policy=AcceptPolicy(reject_lateral=not args.allow_lateral),
    )
    result = predict([manifest_path], out, bundle_path, options)
    log.info("%s", result.summary_line())
    return (
        read_table(out / "predictions.csv", "predictions table"),
        read_table(out / "rejected.csv", "rejected-files table"),
    )


def run(args: argparse.Namespace) -> int:
    from cxr_cad.manifest import manifest_hash
    from cxr_cad.model import load_bundle
    from cxr_cad.model.shift import summary_from_bundle, table_shift
    from cxr_cad.report import GradcamSource, model_info_from_bundle, write_report

    bundle = load_bundle(args.model)
    with tempfile.TemporaryDirectory(prefix="cxr-cad-evaluate-") as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        manifest_path, manifest, scan_rejected = _cohort_manifest(args, list(bundle.classes), work)
        pred, rejected = _score(args.model, manifest_path, work / "scores", args)
        from cxr_cad.pacs.cliopts import write_dicom_outputs

        dicom_line = write_dicom_outputs(args, args.model, work / "scores" / "predictions.csv")
        pred = join_metadata(pred.drop(columns=["label"], errors="ignore"), manifest, keys=("path",))
        shift, newly_flagged = table_shift(pred, summary_from_bundle(bundle))  # docs/shift.md
        if newly_flagged:
            log.warning("dataset shift: %s", shift["message"])
        rejected = pd.concat([scan_rejected, rejected], ignore_index=True)
        comparison = None
        if args.compare:
            other_bundle = load_bundle(args.compare)
            if str(other_bundle.positive_class) != str(bundle.positive_class):
                raise UsageError(
                    f"--compare: the other model's positive class {other_bundle.positive_class!r} "
                    f"differs from {bundle.positive_class!r}; the AUCs would not be comparable"
                )
            other, _ = _score(args.compare, manifest_path, work / "scores_compare", args)
            comparison = {
                "predictions": other,
                "name": Path(args.compare).name,
                "sha256": other_bundle.sha256,
                "name_a": Path(args.model).name,
            }
        source = manifest_path if args.manifest else Path(args.cohort_dir)
        cohort = cohort_description(args, args.manifest, source.stem if args.manifest else source.name)
        cohort["manifest_hash"] = manifest_hash(manifest)
        gradcam = (
            GradcamSource.from_bundle(bundle, n_per_group=args.gradcam_per_group)
            if args.gradcam_per_group > 0
            else None
        )
        result = write_report(
            pred,
            args.out,
            positive_class=args.positive_class,
            threshold=args.threshold,
            threshold_method="given on the command line" if args.threshold is not None else None,
            model_info=model_info_from_bundle(bundle, args.model),
            cohort_info=cohort,
            rejected_df=rejected,
            comparison=comparison,
            include_identifiers=args.include_identifiers,
            gradcam=gradcam,
            gradcam_note="Grad-CAM explanations were not requested (--gradcam-per-group 0).",
            options=report_options(args),
            pdf=not args.no_pdf,
            shift=shift,
            threshold_source="command line" if args.threshold is not None else "bundle",
        )
        if args.include_identifiers:
            write_rejected(rejected, result.out_dir)
    from cxr_cad.tracking import log_evaluate_run

    log_evaluate_run(args.track, args, bundle, result)  # --track mlflow (docs/export.md)
    d = result.data
    auc = d["auc"]["delong"]["auc"]
    print(
        f"evaluate: {d['cohort']['n_images_evaluated']} images evaluated, {d['cohort']['n_rejected']} not "
        f"evaluated; AUC {'not estimable' if auc is None else f'{auc:.3f}'}; report in {result.out_dir}"
    )
    if dicom_line:
        print(f"evaluate: DICOM: {dicom_line}")
    return 0
