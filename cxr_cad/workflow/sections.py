"""The sections of a workflow file as pydantic models (frozen, unknown keys refused).

:class:`WorkflowFile` is the whole file; ``docs/workflow.schema.json`` is generated from it
(``python -m cxr_cad.cli.schema``; :mod:`cxr_cad.workflow.json_schema`). The ``model`` section *is* the training config's
:class:`~cxr_cad.config.ModelConfig` (same options, same defaults) plus ``bundle``; the
``train`` section holds the other :class:`~cxr_cad.config.TrainConfig` options and is
checked by it. Cross-section rules (paths that must exist, steps that need inputs) are in
:mod:`cxr_cad.workflow.schema`.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from cxr_cad.config.sections import ModelConfig
from cxr_cad.config.types import ConfigModel, Float, Int, StrictBool, section_default

__all__ = [
    "StepName",
    "STEP_NAMES",
    "WorkflowData",
    "IngestSection",
    "SplitSection",
    "WorkflowModel",
    "CrossvalSection",
    "EvaluateSection",
    "CohortSection",
    "ReportSection",
    "WorkflowFile",
    "SECTION_MODELS",
]

StepName = Literal["ingest", "split", "crossval", "train", "evaluate", "report"]
#: Steps a workflow may name, in the only order they can run.
STEP_NAMES: tuple[StepName, ...] = typing.get_args(StepName)


def _comma_list(value: Any) -> Any:
    """``"CR,DX"`` (a ``--set`` value or a YAML string) -> ``["CR", "DX"]``."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


Names = Annotated[list[str], BeforeValidator(_comma_list)]


class WorkflowData(ConfigModel):
    """The cohorts: where the images are, where their labels come from, which classes."""

    train: str | None = Field(default=None, description="folder of DICOM/PNG/JPEG, or a manifest .csv (must exist)")
    train_labels: str | None = Field(
        default="folders", description="'folders' (class folder names), a labels CSV, or null (labels in the manifest)"
    )
    test: str | None = Field(default=None, description="folder or manifest .csv of the test cohort (must exist)")
    test_labels: str | None = Field(default="folders", description="as train_labels, for the test cohort")
    label_key: str | None = Field(default=None, description="key column of a labels CSV (null = detected)")
    classes: Names = Field(default_factory=lambda: ["NORMAL", "PNEUMONIA"])
    positive_class: str = "PNEUMONIA"
    patient_id_pattern: str | None = None
    task: Literal["multiclass", "multilabel"] = Field(
        default="multiclass", description="multilabel: classes are findings, one sigmoid each (docs/train.md)"
    )
    label_layout: Literal["nih", "columns", "chexpert"] | None = Field(
        default=None, description="multi-label labels CSV layout (docs/ingest.md#multi-label-findings)"
    )
    uncertain: Literal["ignore", "zeros", "ones"] = Field(
        default="ignore", description="multi-label: what an uncertain (-1) label becomes"
    )


class IngestSection(ConfigModel):
    """Which files are accepted (the acceptance policy of ``cxr-cad ingest``)."""

    modalities: Names = Field(default_factory=lambda: ["CR", "DX", "DR"], description="[] = any modality")
    reject_lateral: StrictBool = True
    apply_voi: StrictBool = True
    verify_pixels: StrictBool = False
    workers: Int | None = Field(default=None, description="null = one per CPU core (at most 8)")


class SplitSection(ConfigModel):
    """Held-out patients taken from data.train (the ``split`` step)."""

    test_fraction: Float = Field(default=0.2, gt=0.0, lt=1.0)
    seed: Int = 0


class WorkflowModel(ModelConfig):
    """The training config's ``model`` options, plus an existing bundle. ``init``: imagenet,
    imagenet:/path.pth, none, bundle (= model.bundle) or a bundle path."""

    bundle: str | None = Field(default=None, description="an existing model bundle (scored, compared or fine-tuned)")


class CrossvalSection(ConfigModel):
    """Patient-grouped k-fold cross-validation; folds are seeded by train.seed."""

    folds: Int = Field(default=5, ge=2, le=50)


class EvaluateSection(ConfigModel):
    """Scoring the test cohort."""

    batch_size: Int = Field(default=32, ge=1)
    workers: Int | None = None
    device: str = "auto"


class CohortSection(ConfigModel):
    """Shown in the report (docs/report.md); null = "not recorded"."""

    source: str | None = None
    site: str | None = None
    dates: str | None = None
    design: str | None = None
    population: str | None = None
    eligibility: str | None = None
    reference_standard: str | None = None
    validation: str | None = None


class ReportSection(ConfigModel):
    """The report: PDF or not, bootstrap resamples, confidence level (1 - alpha)."""

    pdf: StrictBool = True
    bootstrap: Int = 2000
    alpha: Float = Field(default=0.05, gt=0.0, lt=0.5)


class WorkflowFile(ConfigModel):
    """A workflow file (``cxr-cad run``). Every key has a default; paths are relative to the
    folder ``cxr-cad run`` is started in; ``${NAME}`` / ``${NAME:-default}`` read the environment."""

    name: str = "workflow"
    description: str | None = ""
    steps: Annotated[list[StepName], BeforeValidator(_comma_list)] = Field(default_factory=lambda: list(STEP_NAMES))
    data: WorkflowData = section_default(WorkflowData)
    ingest: IngestSection = section_default(IngestSection)
    split: SplitSection = section_default(SplitSection)
    model: WorkflowModel = section_default(WorkflowModel)
    train: dict[str, Any] = Field(
        default_factory=dict, description="TrainConfig options except model and data.classes/positive_class"
    )
    crossval: CrossvalSection = section_default(CrossvalSection)
    evaluate: EvaluateSection = section_default(EvaluateSection)
    cohort: CohortSection = section_default(CohortSection)
    report: ReportSection = section_default(ReportSection)


#: Workflow sections that are models (``train`` is a mapping checked by TrainConfig).
SECTION_MODELS: dict[str, type[ConfigModel]] = {
    name: field.annotation
    for name, field in WorkflowFile.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, ConfigModel)
}
