"""Turn a validated workflow (see :mod:`cxr_cad.workflow.schema`) into runner steps and run them.

Run folder layout (``RUN_DIR``)::

    workflow.yaml        the resolved workflow (defaults filled in, --set applied)
    run.json             what ran, what was skipped, timings, headline numbers
    run.log              the log of every run in this folder (appended)
    ingest/<cohort>/     manifest.csv, rejected.csv, unlabelled.csv, ingest.json
    split/               train.csv, test.csv (held-out patients)
    crossval/            fold_*/ runs, out-of-fold predictions, cv metrics
    train/               model.pt (the bundle), train_log.csv, checkpoint.pt ...
    evaluate/<model>/    predictions.csv, rejected.csv, summary.json
    report/test/         report.html, report.pdf, metrics.json, figures
    report/crossval/     the same for the out-of-fold predictions
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cxr_cad.core.atomic import atomic_write_text
from cxr_cad.errors import OutputError
from cxr_cad.workflow.report_step import report_step
from cxr_cad.workflow.runner import Step, StepOutcome, run_steps, write_record
from cxr_cad.workflow.schema import train_config_dict
from cxr_cad.workflow.steps import MODEL_ROLES, crossval_step, evaluate_step, ingest_step, split_step, train_step

log = logging.getLogger(__name__)

__all__ = ["WorkflowResult", "build_steps", "run_workflow", "planned_steps"]


@dataclass
class WorkflowResult:
    """What a workflow run did: one outcome per step, notes (e.g. a step left out and why)."""

    run_dir: Path
    outcomes: list[StepOutcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def report(self) -> dict:
        """The report step's outputs (paths relative to ``run_dir/report`` + headlines), or {}."""
        for o in self.outcomes:
            if o.name == "report":
                return o.outputs
        return {}


def planned_steps(wf: dict) -> tuple[list[str], list[str]]:
    """The steps that will run and notes on those left out (e.g. evaluate without a test cohort)."""
    steps, notes = list(wf["steps"]), []
    if "evaluate" in steps and wf["data"]["test"] is None and "split" not in steps:
        steps.remove("evaluate")
        notes.append(
            "no test cohort (data.test is not set): evaluating cross-validation only; "
            "set --set data.test=PATH to evaluate the final model on a separate cohort"
        )
    return steps, notes


def _policy_config(wf: dict) -> dict:
    return dict(wf["ingest"])


def _ingest_step(wf: dict, names: list[str], classes: list[str]) -> Step:
    data = wf["data"]
    cohorts, inputs = {}, {}
    for cohort in ("train", "test"):
        src = data[cohort]
        if src is None:
            continue
        labels = data[f"{cohort}_labels"]
        cohorts[cohort] = {
            "source": src,
            "labels": labels,
            "require_labels": cohort == "train" or "report" in names,
        }
        inputs[cohort] = src
        if labels not in (None, "folders"):
            inputs[f"{cohort}_labels"] = labels
    cfg = {
        "cohorts": cohorts,
        "classes": classes,
        "label_key": data["label_key"],
        "patient_id_pattern": data["patient_id_pattern"],
        "ingest": _policy_config(wf),
        **({"label_layout": data["label_layout"], "uncertain": data["uncertain"]} if data.get("label_layout") else {}),
    }
    return Step(
        "ingest",
        ingest_step,
        cfg,
        inputs,
        output_files=[f"{c}_manifest" for c in cohorts] + [f"{c}_rejected" for c in cohorts],
    )


def _training_steps(wf: dict, names: list[str], classes: list[str], manifest_source: list[str]) -> list[Step]:
    """The crossval and train steps (each when named)."""
    tcfg = train_config_dict(wf)
    init_inputs = {}
    init = wf["model"]["init"]
    if init.startswith("imagenet:"):
        init_inputs["init_weights"] = init.split(":", 1)[1]
    elif init not in ("imagenet", "none"):
        init_inputs["init_weights"] = init
    steps = []
    if "crossval" in names:
        steps.append(
            Step(
                "crossval",
                crossval_step,
                {"classes": classes, "train_config": tcfg, **wf["crossval"]},
                init_inputs,
                depends=manifest_source,
                output_files=["oof_predictions"],
            )
        )
    if "train" in names:
        steps.append(
            Step(
                "train",
                train_step,
                {"classes": classes, "train_config": tcfg},
                init_inputs,
                depends=manifest_source,
                output_files=["bundle"],
            )
        )
    return steps


def _evaluate_step(wf: dict, names: list[str], classes: list[str], manifest_source: list[str]) -> Step:
    models, inputs = {}, {}
    if "train" in names:
        models["new"] = "train"
    bundle = wf["model"]["bundle"]
    if bundle is not None:
        key = "previous" if "train" in names else "model"
        models[key] = bundle
        inputs[f"{key}_bundle"] = bundle
    deps = manifest_source + (["train"] if "train" in names else [])
    return Step(
        "evaluate",
        evaluate_step,
        {"classes": classes, "models": models, "ingest": _policy_config(wf), **wf["evaluate"]},
        inputs,
        depends=deps,
        output_files=[f"{m}_predictions" for m in models],
    )


def _report_step(wf: dict, classes: list[str], steps: list[Step]) -> Step:
    deps = [s.name for s in steps if s.name in ("ingest", "split", "crossval", "evaluate")]
    model_labels = dict(MODEL_ROLES)
    return Step(
        "report",
        report_step,
        {
            "classes": classes,
            "positive_class": wf["data"]["positive_class"],
            "model_labels": model_labels,
            "cohort": wf.get("cohort") or {},
            "ingest": _policy_config(wf),
            **wf["report"],
        },
        depends=deps,
        output_files=["test_metrics", "crossval_metrics"],
    )


def build_steps(wf: dict) -> tuple[list[Step], list[str]]:
    """Runner :class:`Step` objects for a validated workflow, plus notes."""
    names, notes = planned_steps(wf)
    classes = list(wf["data"]["classes"])
    steps: list[Step] = []
    if "ingest" in names:
        steps.append(_ingest_step(wf, names, classes))
    if "split" in names:
        steps.append(
            Step(
                "split",
                split_step,
                {"classes": classes, **wf["split"]},
                depends=["ingest"],
                output_files=["train_manifest", "test_manifest"],
            )
        )
    manifest_source = ["split"] if "split" in names else ["ingest"]
    steps += _training_steps(wf, names, classes, manifest_source)
    if "evaluate" in names:
        steps.append(_evaluate_step(wf, names, classes, manifest_source))
    if "report" in names:
        steps.append(_report_step(wf, classes, steps))
    return steps, notes


class _RunLog:
    """Append the cxr_cad log to ``RUN_DIR/run.log`` while a workflow runs."""

    def __init__(self, path: Path):
        self.handler = logging.FileHandler(path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.handler.setLevel(logging.INFO)
        self.logger = logging.getLogger("cxr_cad")

    def __enter__(self):
        self.old_level = self.logger.level
        self.old_handler_levels = [(h, h.level) for h in self.logger.handlers]
        effective = self.logger.getEffectiveLevel()
        if effective > logging.INFO:  # e.g. `cxr-cad -q`: the console stays quiet, the file does not
            for h in self.logger.handlers:
                h.setLevel(max(h.level, effective))
            self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
        self.handler.close()
        self.logger.setLevel(self.old_level)
        for h, level in self.old_handler_levels:
            h.setLevel(level)


def run_workflow(
    wf: dict, run_dir: str | os.PathLike, *, on_step: Callable[[StepOutcome], None] | None = None
) -> WorkflowResult:
    """Run a validated workflow in ``run_dir`` (created); skips up-to-date steps, resumes
    an interrupted one. Writes ``workflow.yaml``, ``run.json`` and ``run.log`` there.

    Raises whatever the steps raise (ManifestError, ConfigError, BundleError, ...), and
    OutputError when the run folder cannot be written.
    """
    run = Path(run_dir).absolute()
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write the run folder {run}: {exc.strerror or exc}; choose another --out") from exc
    atomic_write_text(run / "workflow.yaml", yaml.safe_dump(wf, sort_keys=False), hint="choose another --out")
    steps, notes = build_steps(wf)
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    with _RunLog(run / "run.log"):
        for note in notes:
            log.warning("%s", note)
        log.info("workflow %s: steps %s in %s", wf["name"], ", ".join(s.name for s in steps), run)
        outcomes = run_steps(steps, run, on_step=on_step)
    result = WorkflowResult(run, outcomes, notes)
    record = {
        "workflow": wf["name"],
        "started": started,
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "notes": notes,
        "steps": [{"step": o.name, "status": o.status, "seconds": round(o.seconds, 2)} for o in outcomes],
        "report": result.report,
    }
    write_record(run / "run.json", record)
    return result
