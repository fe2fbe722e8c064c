"""``cxr-cad evaluate`` and the workflow's evaluation: :func:`evaluate_cohort` scores a labelled
cohort (optionally with a second model, for the paired comparison) in a scratch folder inside the
output folder, then writes its report with :func:`cxr_cad.api._report.report_cohort`."""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from cxr_cad.api._cohort import labelled_cohort
from cxr_cad.api._pacs import PacsOptions, write_dicom_outputs
from cxr_cad.api._report import model_label, named_warnings, report_cohort
from cxr_cad.api._scoring import cohort_shift, join_metadata, read_table, score
from cxr_cad.config import AcceptPolicy, PredictOptions
from cxr_cad.core.atomic import PathLike
from cxr_cad.errors import OutputError, UsageError
from cxr_cad.manifest import manifest_hash
from cxr_cad.tracking import log_evaluate_run

if TYPE_CHECKING:
    from cxr_cad.model import Bundle
    from cxr_cad.report import ReportOptions, ReportResult

__all__ = ["EvaluateResult", "evaluate_cohort"]

#: the report's logger (the scoring summary lines)
log = logging.getLogger("cxr_cad.api._report")


@dataclass
class EvaluateResult:
    """What :func:`evaluate_cohort` did: the report, the model, and the ``--dicom-out`` summary."""

    report: ReportResult
    bundle: Bundle
    dicom: str | None = None


def _scoring_record(out: Path) -> dict | None:
    from cxr_cad.inference.backend import scoring_record  # torch

    return scoring_record(out)


def _scores(
    model: PathLike, manifest_path: Path, out: Path, options: PredictOptions, label: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    with named_warnings(label):
        log.info("%s: %s", label, score(model, [manifest_path], out, options).summary_line())
    return (
        read_table(out / "predictions.csv", "predictions table"),
        read_table(out / "rejected.csv", "rejected-files table"),
    )


def _comparison(
    compare: PathLike, bundle: Bundle, model: PathLike, manifest_path: Path, work: Path, options: PredictOptions
) -> dict:
    """The second model's scores of the same images (paired DeLong test)."""
    from cxr_cad.model import load_bundle  # torch

    other_bundle = load_bundle(compare)
    if str(other_bundle.positive_class) != str(bundle.positive_class):
        raise UsageError(
            f"--compare: the other model's positive class {other_bundle.positive_class!r} "
            f"differs from {bundle.positive_class!r}; the AUCs would not be comparable"
        )
    label = model_label({"name": Path(compare).name, "sha256": other_bundle.sha256}, "compared model")
    other, _ = _scores(compare, manifest_path, work / "scores_compare", options, label)
    return {
        "predictions": other,
        "name": Path(compare).name,
        "sha256": other_bundle.sha256,
        "name_a": Path(model).name,
        "shift": cohort_shift(other, other_bundle)[0],  # the other model's own verdict on this cohort
    }


#: prefix of evaluate's scratch folder, inside the output folder (docs/report.md#outputs)
SCRATCH_PREFIX = ".cxr-cad-evaluate-"


@contextlib.contextmanager
def _scratch(out: Path) -> Iterator[Path]:
    """A scratch folder inside ``out`` (scores, journals, the scanned manifest), removed on every
    exit path; one left by a killed earlier run (``kill -9``) is removed first. Its file names
    are fixed (cohort_manifest.csv, scores/predictions.csv ...), never patient data."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob(SCRATCH_PREFIX + "*"):
            shutil.rmtree(old, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=out))
    except OSError as exc:
        raise OutputError(
            f"cannot write to the output folder {out}: {exc.strerror or exc}; choose a writable --out"
        ) from exc
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt while the block runs (main thread only), so ``finally``
    blocks (the scratch folder's removal) run when a scheduler stops the command."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt(f"stopped by signal {signum}")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def evaluate_cohort(
    model: PathLike,
    out_dir: PathLike,
    options: ReportOptions,
    *,
    manifest: PathLike | None = None,
    folder: str | None = None,
    labels: PathLike | None = None,
    predict: PredictOptions | None = None,
    policy: AcceptPolicy | None = None,
    compare: PathLike | None = None,
    work_dir: PathLike | None = None,
    pacs: PacsOptions | None = None,
    gradcam_per_group: int = 2,
    track: str | None = None,
    track_params: Mapping[str, Any] | None = None,
) -> EvaluateResult:
    """Score a labelled cohort with ``model`` and write its clinical report into ``out_dir``.

    The cohort is ``manifest`` (with a label column) or ``folder`` (``DIR/<class>/...``, or a
    ``dicomweb:`` URL with ``labels`` and ``pacs.query``); scanned with ``policy``, scored with
    ``predict`` (in ``work_dir``, resumable; default a temporary folder). ``compare``: a second
    bundle scored on the same images. ``options.cohort_info`` gets the manifest's hash.
    ``pacs.dicom_out``: DICOM SRs of the scores. ``track``: ``mlflow[:URI]`` logs the run with
    ``track_params``.
    """
    from cxr_cad.model import load_bundle  # torch

    pacs = pacs or PacsOptions()
    bundle = load_bundle(model)
    predict_options = (predict or PredictOptions()).replace(policy=policy or AcceptPolicy())
    with _scratch(Path(out_dir)) as tmp, _terminate_as_interrupt():
        work = Path(work_dir) if work_dir else tmp
        work.mkdir(parents=True, exist_ok=True)
        cohort = labelled_cohort(
            manifest=manifest,
            folder=folder,
            classes=list(bundle.classes),
            work=work,
            policy=predict_options.policy or AcceptPolicy(),
            labels=labels,
            query=list(pacs.query) or None,
        )
        label = model_label({"name": Path(model).name, "sha256": bundle.sha256})
        pred, rejected = _scores(model, cohort.manifest_path, work / "scores", predict_options, label)
        dicom = write_dicom_outputs(pacs, model, work / "scores" / "predictions.csv")
        pred = join_metadata(pred.drop(columns=["label"], errors="ignore"), cohort.manifest, keys=("path",))
        rejected = pd.concat([cohort.rejected, rejected], ignore_index=True)
        comparison = (
            _comparison(compare, bundle, model, cohort.manifest_path, work, predict_options) if compare else None
        )
        opts = options.replace(
            cohort_info={
                **(options.cohort_info or {}),
                "manifest_hash": manifest_hash(cohort.manifest),
                "scoring": _scoring_record(work / "scores"),  # backend / int8 (cxr_cad.inference.backend)
            }
        )
        report = report_cohort(
            pred,
            out_dir,
            opts,
            bundle=bundle,
            rejected=rejected,
            comparison=comparison,
            gradcam_per_group=gradcam_per_group,
            warn_shift=True,
        )
    if track:
        log_evaluate_run(track, dict(track_params or {}), bundle, report)
    return EvaluateResult(report, bundle, dicom)
