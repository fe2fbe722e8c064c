"""Workflows: ``cxr-cad run WORKFLOW.yaml`` and ``cxr-cad demo``.

* :mod:`~cxr_cad.workflow.schema` - read a workflow file, apply ``--set``, validate (ConfigError).
* :mod:`~cxr_cad.workflow.runner` - run steps in a run folder; skip unchanged, resume interrupted.
* :mod:`~cxr_cad.workflow.steps` / :mod:`~cxr_cad.workflow.report_step` - the steps.
* :mod:`~cxr_cad.workflow.pipeline` - workflow -> steps -> :func:`run_workflow`.
* :mod:`~cxr_cad.workflow.demo` - the quickstart on the bundled sample radiographs.
"""

from cxr_cad.workflow.pipeline import WorkflowResult, run_workflow
from cxr_cad.workflow.schema import STEP_NAMES, load_workflow, validate_workflow

__all__ = ["STEP_NAMES", "WorkflowResult", "load_workflow", "run_workflow", "validate_workflow"]
