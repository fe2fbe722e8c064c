"""``cxr-cad evaluate``: score a labelled cohort with a model bundle and write the clinical report."""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import pandas as pd

from cxr_cad.cli.report import add_report_options, cohort_description, report_options, write_rejected
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
    p.add_argument(
        "--modalities",
        default="CR,DX,DR",
        metavar="LIST",
        help="accepted (0008,0060) Modality values, comma-separated, or 'any' (default: CR,DX,DR)",
    )
    p.add_argument(
        "--no-voi",
        action="store_true",
        help="scan the cohort without VOI LUT / windowing (scoring follows the bundle's setting)",
    )
    add_report_options(p)
    from cxr_cad.api._pacs import add_output_options  # --dicom-out/--secondary-capture/--stow (docs/pacs.md)

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


def _policy(args: argparse.Namespace):
    from cxr_cad.io.policy import AcceptPolicy

    return AcceptPolicy.from_options(
        modalities=args.modalities, allow_lateral=args.allow_lateral, apply_voi=not args.no_voi
    )


def _score(
    bundle_path: str, manifest_path: Path, out: Path, args: argparse.Namespace
) -> tuple[pd.DataFrame, pd.DataFrame]:
    from cxr_cad.api import read_table, score
    from cxr_cad.inference.predict import PredictOptions

    options = PredictOptions(batch_size=args.batch_size, workers=args.workers, device=args.device, policy=_policy(args))
    log.info("%s", score(bundle_path, [manifest_path], out, options).summary_line())
    return (
        read_table(out / "predictions.csv", "predictions table"),
        read_table(out / "rejected.csv", "rejected-files table"),
    )


def _comparison(args: argparse.Namespace, bundle, manifest_path: Path, work: Path) -> dict | None:
    """The --compare model's scores of the same images (paired DeLong test), or None."""
    if not args.compare:
        return None
    from cxr_cad.model import load_bundle

    other_bundle = load_bundle(args.compare)
    if str(other_bundle.positive_class) != str(bundle.positive_class):
        raise UsageError(
            f"--compare: the other model's positive class {other_bundle.positive_class!r} "
            f"differs from {bundle.positive_class!r}; the AUCs would not be comparable"
        )
    other, _ = _score(args.compare, manifest_path, work / "scores_compare", args)
    return {
        "predictions": other,
        "name": Path(args.compare).name,
        "sha256": other_bundle.sha256,
        "name_a": Path(args.model).name,
    }


def _report(args: argparse.Namespace, bundle, pred: pd.DataFrame, rejected: pd.DataFrame, cohort_info: dict, **fields):
    """The clinical report of the scored cohort into --out."""
    from cxr_cad.report import GradcamSource, model_info_from_bundle, write_report

    gradcam = (
        GradcamSource.from_bundle(bundle, n_per_group=args.gradcam_per_group) if args.gradcam_per_group > 0 else None
    )
    opts = report_options(
        args,
        threshold=args.threshold,
        threshold_method="given on the command line" if args.threshold is not None else None,
        threshold_source="command line" if args.threshold is not None else "bundle",
        cohort_info=cohort_info,
        gradcam_note="Grad-CAM explanations were not requested (--gradcam-per-group 0).",
    )
    result = write_report(
        pred,
        args.out,
        opts,
        model_info=model_info_from_bundle(bundle, args.model),
        rejected_df=rejected,
        gradcam=gradcam,
        **fields,
    )
    if args.include_identifiers:
        write_rejected(rejected, result.out_dir)
    return result


def run(args: argparse.Namespace) -> int:
    from cxr_cad.api import cohort_shift, join_metadata, labelled_cohort
    from cxr_cad.api._pacs import write_dicom_outputs
    from cxr_cad.manifest import manifest_hash
    from cxr_cad.model import load_bundle

    bundle = load_bundle(args.model)
    policy = _policy(args)  # a bad --modalities stops here, before anything is scanned
    with tempfile.TemporaryDirectory(prefix="cxr-cad-evaluate-") as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        cohort_data = labelled_cohort(
            manifest=args.manifest,
            folder=args.cohort_dir,
            classes=list(bundle.classes),
            work=work,
            policy=policy,
            labels=args.labels,
            query=args.query,
        )
        pred, rejected = _score(args.model, cohort_data.manifest_path, work / "scores", args)
        dicom_line = write_dicom_outputs(args, args.model, work / "scores" / "predictions.csv")
        pred = join_metadata(pred.drop(columns=["label"], errors="ignore"), cohort_data.manifest, keys=("path",))
        shift, newly_flagged = cohort_shift(pred, bundle)  # docs/shift.md
        if newly_flagged:
            log.warning("dataset shift: %s", (shift or {}).get("message"))
        rejected = pd.concat([cohort_data.rejected, rejected], ignore_index=True)
        comparison = _comparison(args, bundle, cohort_data.manifest_path, work)
        source = cohort_data.manifest_path if args.manifest else Path(args.cohort_dir)
        cohort = cohort_description(args, args.manifest, source.stem if args.manifest else source.name)
        cohort["manifest_hash"] = manifest_hash(cohort_data.manifest)
        result = _report(args, bundle, pred, rejected, cohort, comparison=comparison, shift=shift)
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
