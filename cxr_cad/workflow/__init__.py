"""Workflows: ``cxr-cad run WORKFLOW.yaml`` and ``cxr-cad demo``.

* :mod:`~cxr_cad.workflow.schema` - read a workflow file, apply ``--set``, validate (ConfigError);
  beside it :mod:`~cxr_cad.workflow.overrides` (``${ENV}``, ``--set``), :mod:`~cxr_cad.workflow.suggest`
  (did you mean), :mod:`~cxr_cad.workflow.shipped` (shipped workflows by name) and
  :mod:`~cxr_cad.workflow.json_schema` (``docs/workflow.schema.json``).
* :mod:`~cxr_cad.workflow.runner` - run steps in a run folder; skip unchanged, resume interrupted.
* :mod:`~cxr_cad.workflow.steps` / :mod:`~cxr_cad.workflow.report_step` - the steps.
* :mod:`~cxr_cad.workflow.pipeline` - workflow -> steps -> :func:`run_workflow`.
* :mod:`~cxr_cad.workflow.demo` - the quickstart on the bundled sample radiographs.

The names below are imported on first use, so that ``cxr_cad.workflow.schema`` (which
``cxr-cad run`` reads before anything runs) does not import the steps and their engines.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cxr_cad.workflow.pipeline import WorkflowResult, run_workflow
    from cxr_cad.workflow.schema import STEP_NAMES, load_workflow, validate_workflow

_EXPORTS = {
    "STEP_NAMES": "cxr_cad.workflow.schema",
    "WorkflowResult": "cxr_cad.workflow.pipeline",
    "load_workflow": "cxr_cad.workflow.schema",
    "run_workflow": "cxr_cad.workflow.pipeline",
    "validate_workflow": "cxr_cad.workflow.schema",
}

__all__ = ["STEP_NAMES", "WorkflowResult", "load_workflow", "run_workflow", "validate_workflow"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cxr_cad.workflow' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
