"""Workflows: ``cxr-cad run WORKFLOW.yaml`` and ``cxr-cad demo``.

* :mod:`~cxr_cad.workflow.schema` - read a workflow file, apply ``--set``, validate (ConfigError).
* :mod:`~cxr_cad.workflow.runner` - run steps in a run folder; skip unchanged, resume interrupted.
* :mod:`~cxr_cad.workflow.steps` / :mod:`~cxr_cad.workflow.report_step` - the steps.
* :mod:`~cxr_cad.workflow.pipeline` - workflow -> steps -> :func:`run_workflow`.
* :mod:`~cxr_cad.workflow.demo` - the quickstart on the bundled sample radiographs.
"""

from cxr_cad.workflow.schema import STEP_NAMES, load_workflow, validate_workflow

__all__ = ["STEP_NAMES", "load_workflow", "validate_workflow", "run_workflow", "WorkflowResult"]


def __getattr__(name: str):  # pipeline imports pandas; keep `import cxr_cad.workflow` light
    if name in ("run_workflow", "WorkflowResult"):
        from cxr_cad.workflow import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)
